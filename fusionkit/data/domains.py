"""Text domains: plain text in train / validation / test splits, for language models (the ``causal`` zoo).

A :class:`TextTask` is a :class:`~fusionkit.data.tasks.Task` without labels: its metric is ``log_likelihood``, the
mean log-probability per predicted token (nats; higher is better, perplexity = exp(−it)), which the causal scorer
(:class:`~fusionkit.models.lm_evaluator.LMEvaluator`) computes. The bundled domains are cut from the bundled
classification corpora, so they inherit their de-duplicated, leak-free splits:

===========  ==================================================================
name         texts
===========  ==================================================================
reviews      Rotten Tomatoes review snippets (the ``sentiment`` task's texts)
plots        sentences of film plot summaries (``subjectivity``'s objective class)
tweets       2016 election tweets of both candidates (the ``author`` task)
news         Reuters R8 newswire, lowercased, numbers stripped (the ``reuters`` task)
===========  ==================================================================

:func:`text_task_from` makes one from a user's text file (one text per line) or list of strings, carving
validation and test (10% each, seeded) the way :func:`~fusionkit.data.tasks.task_from` does for a CSV.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from ..core.errors import TaskError
from .tasks import SPLITS, Task, load_task

LOG_LIKELIHOOD = "log_likelihood"


@dataclass
class TextTask(Task):
    """Splits of plain text (a ``text`` column only); scored by mean log-likelihood per token."""

    metric: str = LOG_LIKELIHOOD

    @property
    def label_names(self) -> list[str]:
        return []

    @property
    def num_labels(self) -> int:
        return 0

    def chance(self, split: str = "test") -> float | None:
        return None  # no labels, no majority class

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(b"text")
            for split in SPLITS:
                h.update(split.encode())
                h.update("\x1e".join(self.data[split]["text"]).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


# name -> (bundled task, the label whose texts form the domain or None for all, description)
DOMAINS = {
    "reviews": ("sentiment", None, "Rotten Tomatoes review snippets"),
    "plots": ("subjectivity", "objective", "sentences of film plot summaries"),
    "tweets": ("author", None, "2016 election tweets (Trump and Clinton)"),
    "news": ("reuters", None, "Reuters R8 newswire (lowercased, numbers stripped)"),
}


def load_domain(name: str) -> TextTask:
    """A bundled text domain (module docstring), every text of its splits."""
    if name not in DOMAINS:
        raise TaskError(f"unknown text domain {name!r}; fix: use one of {', '.join(DOMAINS)}, or "
                        "text_task_from(file) for your own text")
    source, label, description = DOMAINS[name]
    task = load_task(source)
    parts = {}
    for split in SPLITS:
        d = task.data[split]
        if label is not None:
            keep = task.label_names.index(label)
            d = d.select(np.flatnonzero(np.asarray(d["label"]) == keep))
        parts[split] = d.remove_columns([c for c in d.column_names if c != "text"])
    return TextTask(name, datasets.DatasetDict(parts), description=description)


def text_task_from(data, name: str = "text", seed: int = 0, min_chars: int = 1) -> TextTask:
    """A :class:`TextTask` from a UTF-8 text file (one text per line) or a list of strings; validation and test are
    10% each, chosen by a seeded shuffle (duplicates dropped first, so no text is in two splits)."""
    texts = read_texts(data, min_chars) if isinstance(data, (str, Path)) else _texts(data, min_chars)
    texts = list(dict.fromkeys(texts))
    if len(texts) < 10:
        raise TaskError(f"{len(texts)} distinct texts cannot be split into train, validation and test; fix: give "
                        "at least 10 (one per line)")
    order = np.random.default_rng(seed).permutation(len(texts))
    n = max(1, len(texts) // 10)
    picks = {"test": order[:n], "validation": order[n:2 * n], "train": order[2 * n:]}
    parts = {s: datasets.Dataset.from_dict({"text": [texts[i] for i in sorted(idx)]}) for s, idx in picks.items()}
    return TextTask(name, datasets.DatasetDict({s: parts[s] for s in SPLITS}),
                    description=f"user text ({len(texts)} texts)")


def read_texts(path: str | Path, min_chars: int = 1) -> list[str]:
    """The non-empty lines of a UTF-8 text file: one text each."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no such file: {path}; fix: pass a UTF-8 text file, one text per line")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if len(t) >= min_chars]
    if not texts:
        raise TaskError(f"{path} has no non-empty lines; fix: put one text per line")
    return texts


def _texts(data, min_chars: int) -> list[str]:
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        return [t.strip() for t in data if len(t.strip()) >= min_chars]
    raise TaskError(f"cannot make a text task from {type(data).__name__}; fix: pass a text file or a list of strings")
