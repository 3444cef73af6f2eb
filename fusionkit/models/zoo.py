"""Zoos: named sets of experts that the notebooks, merges and searches share.

* ``multitask``  - one MiniLM expert per bundled task (sentiment, subjectivity, topic, reuters, author).
  Different label spaces: each expert keeps its own head (the GLUE-style setting of RegMean, Jin et al. 2023).
* ``partitions`` - experts on label-skewed (non-IID) partitions of ``topic``: each partition draws 80% of its
  examples from its own quarter of the 20 classes. One label space, so heads can be merged too.
* ``causal``     - SmolLM2-135M (a llama-architecture causal LM) fine-tuned on four text domains (reviews, plot
  summaries, tweets, newswire: :mod:`fusionkit.data.domains`), scored by mean log-likelihood per token. One
  vocabulary, so the LM head is merged with the body; sizes from :data:`fusionkit.core.profiles.CAUSAL`.
* ``transfer``   - DFWE's setting (Ninalga 2023): the source experts (every multitask expert but sentiment),
  each fine-tuned again on a few-sample ``sentiment`` target, plus the target-only fine-tune of the base
  (FETA's Pretrain→Finetune, Albalak et al. 2022) - in the pool, so an interpolation can always fall back to it.
  The sources are trained at ``profile.source_lr`` (gentler than ``lr``, chosen on dev: a source that erases
  what the base knows about the target cannot give it anything back).

``Zoo.matrix()`` scores every expert on every task of the zoo. An expert is scored on another task with
that task's head (from the zoo expert trained on it) on its own body, which asks how well its body serves
the task - the same way merged bodies are scored later.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, read_json, stable_hash, write_json
from ..core.errors import FusionkitError
from ..core.profiles import Profile, get_profile
from .heads import head_for, task_heads

if TYPE_CHECKING:
    from ..data.tasks import Task
    from .evaluator import Evaluator
    from .experts import Expert
    from .scorer import Scorer

# Training, scoring and corpora are imported inside the functions that use them: the command line names the zoos
# (``fusionkit --help``, ``fusionkit merge --list``) without loading torch, datasets or pandas.

BASE = "minilm"
MULTITASK = ("sentiment", "subjectivity", "topic", "reuters", "author")
SPLITS = ("validation", "test")


@dataclass
class Zoo:
    name: str
    profile: Profile
    tasks: dict[str, Task]
    experts: list[Expert]
    train_tasks: dict[str, Task] = field(default_factory=dict)  # expert name -> the data it was tuned on
    base: str = BASE
    _matrices: dict = field(default_factory=dict, repr=False)  # precision -> matrix

    def expert(self, name: str) -> Expert:
        for e in self.experts:
            if e.name == name:
                return e
        raise FusionkitError(f"zoo {self.name!r} has no expert {name!r}; fix: use one of {[e.name for e in self.experts]}")

    def subset(self, names: list[str]) -> "Zoo":
        """The zoo with only the named experts (in that order) and the tasks they were trained on: a search or a
        merge over some of the experts, scored on their tasks alone. Each task's head is that of the subset's first
        expert trained on it (:meth:`heads`); cached statistics stay the experts' own."""
        names = list(names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise FusionkitError(f"a zoo subset needs two or more distinct experts, got {names}; fix: name two or "
                                 f"more of {[e.name for e in self.experts]}")
        experts = [self.expert(n) for n in names]
        tasks = {e.task: self.tasks[e.task] for e in experts}
        return Zoo(self.name, self.profile, tasks, experts,
                   {n: t for n, t in self.train_tasks.items() if n in names}, self.base)

    def heads(self) -> dict[str, dict]:
        """Per task of the zoo, the head of the first expert trained on it (:func:`~fusionkit.models.heads.task_heads`)."""
        return task_heads(self.experts, self.tasks)

    def evaluator(self, precision: str = "float32") -> Evaluator:
        """One live model for scoring this zoo's merges (``precision``: see :class:`~fusionkit.models.evaluator.Evaluator`)."""
        from .lm_evaluator import evaluator_for

        model, tokenizer = self.experts[0].load()
        return evaluator_for(model, tokenizer, max_length=self.profile.max_length,
                             batch_size=self.profile.eval_batch_size, precision=precision)

    def matrix(self, evaluator: Evaluator | None = None, quiet: bool = True) -> dict:
        """``{expert: {task: {"validation": s, "test": s}}}``, cached beside the experts, one per scoring precision
        (the evaluator's; float32 without one), so it sits in the same table as merges scored the same way."""
        precision = evaluator.precision if evaluator is not None else "float32"
        if precision in self._matrices:
            return self._matrices[precision]
        key = stable_hash([self.name, [e.id for e in self.experts],
                           {t: task.fingerprint() for t, task in self.tasks.items()}])
        suffix = "" if precision == "float32" else f"-{precision}"
        art = Artefact(cache_dir("zoos") / f"{self.name}-{self.profile.name}-{key}{suffix}.json", False,
                       f"the {self.name} zoo's score matrix",
                       f"zoo {self.name} ({self.profile.name}): {len(self.experts)} experts x {len(self.tasks)} tasks, "
                       f"{precision}")

        def score(tmp):
            ev = evaluator or self.evaluator()
            heads = self.heads()
            matrix = {}
            for e in self.experts:
                body, own_head = e.body_and_head()
                row = {}
                for t, task in self.tasks.items():
                    head = head_for(t, e.task, own_head, heads)
                    row[t] = {s: round(ev.score(task, s, params=body, head=head), 4) for s in SPLITS}
                matrix[e.name] = row
            write_json(tmp, matrix)
            return matrix

        self._matrices[precision] = obtain(art, read_json, score)
        return self._matrices[precision]

    def multitask_model(self, quiet: bool = False):
        """The zoo's multi-task reference: one body, a head per task, trained on the union of the experts' training
        data with their recipe and budget (:func:`~fusionkit.models.multitask.train_multitask`); cached."""
        from .multitask import train_multitask, union_by_task

        if self.experts[0].kind == "causal":
            raise FusionkitError(f"the {self.name} zoo has no multi-task model (one LM trained on every domain's "
                                 "texts); fix: compare its merges with each expert and with the base")
        return train_multitask(self.base, union_by_task(self.train_tasks), self.profile,
                               seed=self.experts[0].recipe["seed"], quiet=quiet)

    def to_dict(self, evaluator: Evaluator | None = None) -> dict:
        """The CLI's JSON: tasks with their chance level, experts with their scores on every task (scored by
        ``evaluator``'s precision, float32 without one: :meth:`matrix`)."""
        matrix = self.matrix(evaluator)
        return {
            "precision": evaluator.precision if evaluator is not None else "float32",
            "zoo": self.name,
            "profile": self.profile.name,
            "base": self.base,
            "metric": next(iter(self.tasks.values())).metric,
            "tasks": {t: {"num_labels": task.num_labels, "chance": _rounded(task.chance("test")),
                          "sizes": task.sizes()} for t, task in self.tasks.items()},
            "experts": [{"name": e.name, "task": e.task, "id": e.id, "path": str(e.path),
                         "train_examples": e.recipe.get("train_examples"), "scores": matrix[e.name]}
                        for e in self.experts],
        }


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)  # a text task has no chance level


def profile_task(name: str, profile: Profile, seed: int = 0) -> Task:
    """A bundled task cut to the profile's sizes (train and each evaluation split)."""
    from ..data.tasks import load_task

    return load_task(name).subsample(
        {"train": profile.train_examples, "validation": profile.eval_examples, "test": profile.eval_examples},
        seed=seed)


def _multitask(profile: Profile, seed: int, quiet: bool) -> Zoo:
    from .training import finetune

    tasks = {t: profile_task(t, profile, seed) for t in MULTITASK}
    experts = [finetune(BASE, task, profile, seed=seed, quiet=quiet) for task in tasks.values()]
    return Zoo("multitask", profile, tasks, experts, train_tasks={e.name: tasks[e.task] for e in experts})


def label_skewed_partitions(labels, k: int, skew: float = 0.8, seed: int = 0) -> list[np.ndarray]:
    """Indices of ``k`` non-IID partitions: class c lives in partition c mod k with probability ``skew``,
    otherwise in one of the other partitions chosen uniformly."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    home = labels % k
    stay = rng.random(len(labels)) < skew
    other = (home + rng.integers(1, k, len(labels))) % k
    part = np.where(stay, home, other)
    return [np.flatnonzero(part == i) for i in range(k)]


def home_classes(task: Task, i: int, k: int, split: str = "test") -> Task:
    """The part of a task whose labels are partition ``i``'s own (label mod k == i): its in-domain test set."""
    import datasets

    from ..data.tasks import Task

    part = task.data[split].filter(lambda row: row["label"] % k == i)
    return Task(f"{task.name}-home{i}", datasets.DatasetDict({**task.data, split: part}), task.metric)


def _partitions(profile: Profile, seed: int, quiet: bool, k: int = 4) -> Zoo:
    import datasets

    from ..data.tasks import Task, load_task
    from .training import finetune

    pool = load_task("topic").subsample(
        {"train": None if profile.train_examples is None else k * profile.train_examples,
         "validation": profile.eval_examples, "test": profile.eval_examples}, seed=seed)
    experts, train_tasks = [], {}
    for i, idx in enumerate(label_skewed_partitions(pool.data["train"]["label"], k, seed=seed)):
        # Named "topic": same label space, so scored (and later merged) as topic experts.
        part = Task("topic", datasets.DatasetDict(train=pool.data["train"].select(idx),
                                                        validation=pool.data["validation"],
                                                        test=pool.data["test"]), description=f"topic partition {i}")
        experts.append(finetune(BASE, part, profile, seed=seed, name=f"topic-p{i}", quiet=quiet))
        train_tasks[experts[-1].name] = part
    return Zoo("partitions", profile, {"topic": pool}, experts, train_tasks)


def transfer_target(profile: Profile, seed: int = 0) -> Task:
    """The few-sample target: ``profile.few_shot`` sentiment training examples, normal dev/test."""
    from ..data.tasks import load_task

    return load_task("sentiment").subsample(
        {"train": profile.few_shot, "validation": profile.eval_examples, "test": profile.eval_examples}, seed=seed)


TARGET_ONLY = "sentiment (target only)"


def target_only(profile: Profile, seed: int = 0, quiet: bool = False) -> Expert:
    """Pretrain→Finetune: the base fine-tuned on the few target examples alone (DFWE's first baseline)."""
    from .training import finetune

    return finetune(BASE, transfer_target(profile, seed), profile, seed=seed, name=TARGET_ONLY, quiet=quiet,
                    epochs=profile.few_shot_epochs)


def transfer_sources(profile: Profile, seed: int = 0, quiet: bool = False) -> list[Expert]:
    """The source experts: every multitask task but the target, trained at ``profile.source_lr`` (at ``lr`` they
    are the multitask zoo's experts, from the same cache)."""
    from .training import finetune

    lr = profile.source_lr if profile.source_lr is not None else profile.lr
    return [finetune(BASE, profile_task(t, profile, seed), profile, seed=seed, quiet=quiet, lr=lr)
            for t in MULTITASK if t != "sentiment"]


def _transfer(profile: Profile, seed: int, quiet: bool) -> Zoo:
    from .training import finetune

    target = transfer_target(profile, seed)
    experts = [target_only(profile, seed, quiet)]
    experts += [finetune(BASE, target, profile, seed=seed, init=src, name=f"{src.name}>sentiment", quiet=quiet,
                         epochs=profile.few_shot_epochs) for src in transfer_sources(profile, seed, quiet)]
    return Zoo("transfer", profile, {"sentiment": target}, experts, {e.name: target for e in experts})


CAUSAL_BASE = "smollm2-135m"
CAUSAL_DOMAINS = ("reviews", "plots", "tweets", "news")


def _causal(profile: Profile, seed: int, quiet: bool) -> Zoo:
    from ..core.profiles import causal_profile
    from ..data.domains import load_domain
    from .lm_training import finetune_lm

    profile = causal_profile(profile)
    tasks = {d: load_domain(d).subsample({"train": profile.train_examples, "validation": profile.eval_examples,
                                          "test": profile.eval_examples}, seed=seed) for d in CAUSAL_DOMAINS}
    experts = [finetune_lm(CAUSAL_BASE, task, profile, seed=seed, quiet=quiet) for task in tasks.values()]
    return Zoo("causal", profile, tasks, experts, {e.name: tasks[e.task] for e in experts}, base=CAUSAL_BASE)


ZOOS = {"multitask": _multitask, "partitions": _partitions, "transfer": _transfer, "causal": _causal}
LM_ZOOS = frozenset({"causal"})  # the zoos of causal LMs (Expert.kind "causal"); the others hold classifiers


def build_zoo(name: str = "multitask", profile: str | Profile = "smoke", seed: int = 0, quiet: bool = False) -> Zoo:
    """Build (or reuse from the cache) the experts of a named zoo."""
    if name not in ZOOS:
        raise FusionkitError(f"unknown zoo {name!r}; fix: use one of {', '.join(ZOOS)}")
    return ZOOS[name](get_profile(profile), seed, quiet)


def zoo_scorer(zoo: Zoo, tasks: list[str] | None = None, evaluator: Evaluator | None = None,
               examples: int | None = None, precision: str = "float32") -> Scorer:
    """A losses-and-scores :class:`~fusionkit.models.scorer.Scorer` on some of a zoo's tasks (all by default), each
    with the zoo's head for it, on one live model; ``examples`` defaults to the profile's ``search_examples``."""
    from .scorer import Scorer

    tasks = list(tasks or zoo.tasks)
    heads = zoo.heads()
    return Scorer(evaluator or zoo.evaluator(), {t: zoo.tasks[t] for t in tasks}, {t: heads[t] for t in tasks},
                  measure="both", precision=precision,
                  dev_examples=examples if examples is not None else zoo.profile.search_examples)
