"""Text-classification tasks: a ``datasets.DatasetDict`` (train / validation / test), label names and a metric.

Bundled tasks are built from real corpora shipped in PyPI packages (see :mod:`fusionkit.data.assets`):

==============  ==========================================================  =======
name            source                                                      labels
==============  ==========================================================  =======
sentiment       Rotten Tomatoes snippets, fresh vs rotten, balanced (Pang & Lee)  2
subjectivity    review snippets vs plot-summary sentences (Pang & Lee 2004)  2
topic           20 Newsgroups (Lang 1995), subject + body, lowercased        20
reuters         Reuters-21578 R8 (Cardoso-Cachopo 2007)                      8
author          2016 election tweets, Trump vs Clinton                       2
==============  ==========================================================  =======

Corpora without a validation (or test) split get one carved deterministically (stratified, seed 0).
Anything else is a Hugging Face dataset id (online), or a user's CSV / pandas frame / Dataset via
:func:`task_from`.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, stable_hash
from ..core.errors import TaskError
from ..core.versioning import code_version
from .assets import CORPORA, WHEELS, corpus_path, hub_reachable

SPLITS = ("train", "validation", "test")


@dataclass
class Task:
    """A classification task. ``data`` has splits train/validation/test with columns ``text`` and ``label``."""

    name: str
    data: datasets.DatasetDict
    metric: str = "accuracy"
    description: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def label_names(self) -> list[str]:
        return list(self.data["train"].features["label"].names)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def chance(self, split: str = "test") -> float:
        """Majority-class rate of a split: the score of always guessing the most common label."""
        labels = np.asarray(self.data[split]["label"])
        return float(np.bincount(labels, minlength=self.num_labels).max() / max(len(labels), 1))

    def label_counts(self, split: str = "train") -> dict[str, int]:
        counts = np.bincount(np.asarray(self.data[split]["label"]), minlength=self.num_labels)
        return dict(zip(self.label_names, map(int, counts)))

    def sizes(self) -> dict[str, int]:
        return {s: len(self.data[s]) for s in self.data}

    def fingerprint(self) -> str:
        """A content hash of every split's texts and labels (names experts trained on this data)."""
        if self._fingerprint is None:
            h = hashlib.sha256("\x1f".join(self.label_names).encode())
            for split in SPLITS:
                d = self.data[split]
                h.update(split.encode())
                h.update("\x1e".join(d["text"]).encode())
                h.update(np.asarray(d["label"], dtype=np.int64).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def subsample(self, sizes: dict[str, int | None], seed: int = 0, name: str | None = None) -> "Task":
        """A smaller task: at most ``sizes[split]`` examples per split, chosen by a seeded shuffle."""
        parts = {}
        for split in SPLITS:
            d = self.data[split]
            n = sizes.get(split)
            parts[split] = d if n is None or n >= len(d) else d.shuffle(seed=seed).select(range(n))
        # the same kind of task (a TextTask stays one), its fingerprint computed afresh
        return replace(self, name=name or self.name, data=datasets.DatasetDict(parts), _fingerprint=None)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, labels={self.num_labels}, sizes={self.sizes()})"


# ------------------------------------------------------------------------------------------ building
def _class_label(df: pd.DataFrame, label_names: list[str] | None) -> datasets.Features:
    names = label_names or sorted(df["label"].astype(str).unique())
    return datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})


def _to_dataset(df: pd.DataFrame, features: datasets.Features) -> datasets.Dataset:
    names = features["label"].names
    index = {n: i for i, n in enumerate(names)}
    labels = df["label"].astype(str).map(index)
    if labels.isna().any():
        bad = df["label"][labels.isna()].iloc[0]
        raise TaskError(f"label {bad!r} is not among the label names {names}; fix: pass label_names that cover it")
    return datasets.Dataset.from_dict(
        {"text": df["text"].astype(str).tolist(), "label": labels.astype(int).tolist()}, features=features)


def _carve(ds: datasets.Dataset, fraction: float, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split off a deterministic, label-stratified held-out part of ``ds``."""
    parts = ds.train_test_split(test_size=fraction, seed=seed, stratify_by_column="label")
    return parts["train"], parts["test"]


def _assemble(train: pd.DataFrame, test: pd.DataFrame | None = None, label_names=None,
              validation: pd.DataFrame | None = None, seed: int = 0) -> datasets.DatasetDict:
    """Build train/validation/test, carving validation (10%) and test (10%) from train where missing.

    Exact duplicate texts are dropped first (real corpora repeat retweets, reviews and wire stories), and
    a text that appears in a given test or validation split is removed from train, so no example leaks
    from training into evaluation.
    """
    frames = [f for f in (train, validation, test) if f is not None]
    features = _class_label(pd.concat(frames), label_names)
    held_out: set[str] = set()
    for f in (test, validation):
        if f is not None:
            held_out |= set(f["text"])
    train = train.drop_duplicates("text")
    train = train[~train["text"].isin(held_out)]
    train_ds = _to_dataset(train, features)
    if test is None:
        train_ds, test_ds = _carve(train_ds, 0.1, seed)
    else:
        test_ds = _to_dataset(test.drop_duplicates("text"), features)
    if validation is None:
        train_ds, val_ds = _carve(train_ds, 0.1111 if test is None else 0.1, seed)
    else:
        val_ds = _to_dataset(validation[~validation["text"].isin(set(test["text"]) if test is not None else set())]
                             .drop_duplicates("text"), features)
    return datasets.DatasetDict(train=train_ds, validation=val_ds, test=test_ds)


def read_orange_tab(path: str | Path) -> pd.DataFrame:
    """Read an Orange ``.tab`` file: tab-separated with three header lines (names, types, flags)."""
    return pd.read_csv(path, sep="\t", header=0, skiprows=[1, 2], dtype=str, keep_default_na=False)


def _rotten_tomatoes() -> pd.DataFrame:
    return pd.read_csv(corpus_path("rotten_tomatoes"), dtype=str, keep_default_na=False)


def _sentiment() -> datasets.DatasetDict:
    """Fresh vs rotten, balanced by subsampling fresh (as in Pang & Lee's sentence-polarity set)."""
    df = _rotten_tomatoes().rename(columns={"category": "label"})
    rotten = df[df["label"] == "rotten"]
    fresh = df[df["label"] == "fresh"].sample(n=len(rotten), random_state=0)
    return _assemble(pd.concat([rotten, fresh], ignore_index=True)[["text", "label"]], label_names=["rotten", "fresh"])


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _subjectivity() -> datasets.DatasetDict:
    """Review snippets (subjective) vs sentences of plot summaries (objective), balanced as in Pang & Lee 2004."""
    df = _rotten_tomatoes()
    sentences = [s.strip() for plot in df.loc[df["category"] == "plot", "text"]
                 for s in _SENTENCE.split(plot.replace("\n", " "))]
    sentences = [s for s in sentences if 6 <= len(s.split()) <= 60]
    reviews = df.loc[df["category"].isin(["fresh", "rotten"]), "text"]
    n = min(len(sentences), len(reviews))
    rng = np.random.default_rng(0)
    objective = pd.DataFrame({"text": rng.permutation(np.array(sentences, dtype=object))[:n], "label": "objective"})
    subjective = pd.DataFrame({"text": reviews.sample(n=n, random_state=0).values, "label": "subjective"})
    return _assemble(pd.concat([subjective, objective], ignore_index=True), label_names=["subjective", "objective"])


def _orange(train: str, test: str) -> datasets.DatasetDict:
    frames = []
    for name in (train, test):
        df = read_orange_tab(corpus_path(name)).rename(columns={"Category": "label", "Text": "text"})
        frames.append(df[df["text"].str.strip() != ""][["text", "label"]])
    return _assemble(frames[0], frames[1])


_URL = re.compile(r"https?://\S+")


def _author() -> datasets.DatasetDict:
    df = read_orange_tab(corpus_path("election-tweets-2016"))
    df = pd.DataFrame({"text": df["Content"].str.replace(_URL, "", regex=True).str.strip(),
                       "label": df["Author"].str.replace("realDonaldTrump", "Trump").str.replace("HillaryClinton", "Clinton")})
    return _assemble(df[df["text"] != ""], label_names=["Clinton", "Trump"])


BUNDLED = {
    "sentiment": (_sentiment, "Rotten Tomatoes review snippets: fresh vs rotten"),
    "subjectivity": (_subjectivity, "review snippet (subjective) vs plot-summary sentence (objective)"),
    "topic": (lambda: _orange("20newsgroups-train", "20newsgroups-test"), "20 Newsgroups: 20 topics"),
    "reuters": (lambda: _orange("reuters-r8-train", "reuters-r8-test"), "Reuters R8 news: 8 topics"),
    "author": (_author, "2016 election tweets: Trump vs Clinton"),
}


@functools.lru_cache(maxsize=None)
def _bundled(name: str) -> Task:
    build, description = BUNDLED[name]
    return Task(name, _assembled(name, build), description=description)


def _assembled(name: str, build) -> datasets.DatasetDict:
    """A bundled task's splits: assembled from its corpora once (2-4 s a task: reading, de-duplicating, stratified
    carving) and kept in the cache as Arrow files that every later process maps back in a few milliseconds. Named
    by a hash of this module's code, the corpus wheels and the datasets version, so a change to any of them
    assembles again; the rows are the same either way (same texts, labels and order)."""
    key = stable_hash({"code": code_version(__name__), "datasets": datasets.__version__,
                       "corpora": sorted({WHEELS[package].requirement for package, _ in CORPORA.values()})})
    art = Artefact(cache_dir("tasks") / f"{name}-{key}", True, f"bundled task {name}",
                   f"task {name}: train/validation/test assembled from its corpora")

    def assemble(tmp: Path) -> None:
        build().save_to_disk(str(tmp))

    return obtain(art, lambda path: datasets.load_from_disk(str(path)), assemble)


def load_task(name: str, text_column: str = "text", label_column: str = "label", **load_kwargs) -> Task:
    """A bundled task by name, or a Hugging Face dataset id loaded with ``datasets.load_dataset``."""
    if name in BUNDLED:
        task = _bundled(name)
        return Task(task.name, task.data, task.metric, task.description, task._fingerprint)
    if not hub_reachable():
        raise TaskError(
            f"unknown task {name!r}: not bundled ({', '.join(BUNDLED)}) and the Hugging Face hub is "
            "unreachable; fix: use a bundled task, or build one from your own data with task_from(...)")
    loaded = datasets.load_dataset(name, **load_kwargs)
    return task_from(loaded, name=name, text_column=text_column, label_column=label_column)


def task_from(data, name: str = "custom", text_column: str = "text", label_column: str = "label",
              label_names: list[str] | None = None, seed: int = 0) -> Task:
    """Make a task from a CSV path, a pandas DataFrame, a ``Dataset`` or a ``DatasetDict``.

    Missing validation/test splits are carved from train (10% each, stratified, ``seed``).
    """
    if isinstance(data, (str, Path)):
        if not Path(data).exists():
            raise TaskError(f"no such file: {data}; fix: pass the path of a CSV file with a header row")
        data = pd.read_csv(data, dtype=str, keep_default_na=False)
    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict(train=data)
    if isinstance(data, pd.DataFrame):
        frames = {"train": data}
    elif isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise TaskError(f"dataset has splits {list(data)} but no 'train'; fix: name the training split 'train'")
        frames = {}
        for split, d in data.items():
            df = d.to_pandas()
            feat = d.features.get(label_column)
            if isinstance(feat, datasets.ClassLabel):
                df[label_column] = [feat.names[i] for i in df[label_column]]
                label_names = label_names or feat.names
            frames[{"valid": "validation", "dev": "validation"}.get(split, split)] = df
    else:
        raise TaskError(f"cannot make a task from {type(data).__name__}; fix: pass a CSV path, DataFrame or Dataset")
    for split, df in frames.items():
        missing = [c for c in (text_column, label_column) if c not in df.columns]
        if missing:
            raise TaskError(f"{split} split has no column(s) {missing} (columns: {list(df.columns)}); "
                            "fix: pass text_column= and label_column= naming the right columns")
    frames = {s: df.rename(columns={text_column: "text", label_column: "label"})[["text", "label"]]
              for s, df in frames.items()}
    dd = _assemble(frames["train"], frames.get("test"), label_names, frames.get("validation"), seed)
    return Task(name, dd, description=f"user task from {type(data).__name__}")
