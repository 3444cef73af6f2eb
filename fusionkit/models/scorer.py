"""The one scorer: the score, the loss, or both, of any state dict on some tasks - for evaluation, search and
landscapes alike. Fast, honest and safe to run in parallel.

Gradient-free searches (DFWE, Evolver) and landscape grids score hundreds of candidates, so scoring must cost
little more than the forward pass itself:

* one live model per thread; candidate tensors go in through ``torch.func.functional_call``
  (:class:`~fusionkit.models.evaluator.Evaluator`) - never a deep copy, never a reload;
* each dev split is tokenised once per thread and kept;
* repeated candidates are memoised by the search loops, so they cost nothing.

Honesty: candidates are scored on the ``validation`` split (cut to ``dev_examples``); a search looks at ``test``
once, for its final choice (``scores(state, "test")``; test is never cut).

What a call returns: ``measure="score"`` - the mean metric over tasks (what a search maximises);
``measure="both"`` - ``{"loss": {task: CE}, "accuracy": {task: acc}, "mean_loss", "mean_accuracy"}`` from one
forward pass per task (what a landscape draws).

Scale-out: a scorer built from an :class:`~fusionkit.models.experts.Expert` pickles to a few hundred kB (the
expert's *path*, dev/test data, heads), and each worker - thread, process or dask worker - builds its own live
model on first use. ``functional_call`` swaps tensors into the module for the duration of a forward, so two
threads must not share one model: the live model is thread-local. A scorer built on an existing
:class:`~fusionkit.models.evaluator.Evaluator` (a notebook's one live model) is for one thread.
"""
from __future__ import annotations

import threading

import datasets
import numpy as np
import torch

from ..core.errors import FusionkitError
from ..core.runtime import pick_device, resolve_precision
from ..data.tasks import Task
from .evaluator import Evaluator
from .lm_evaluator import evaluator_for

EVAL_SPLITS = ("validation", "test")
MEASURES = ("score", "both")


def eval_only(task: Task, dev_examples: int | None = None) -> Task:
    """The task without its training texts (kept: the label names), its dev split cut to ``dev_examples``:
    what a worker needs to score candidates."""
    data = {s: task.data[s] for s in EVAL_SPLITS if s in task.data}
    if dev_examples is not None and len(data["validation"]) > dev_examples:
        data["validation"] = data["validation"].select(range(dev_examples))
    data["train"] = task.data["train"].select([])
    return Task(task.name, datasets.DatasetDict(data), task.metric, task.description)


class PerThread:
    """Mixin: ``self._local`` (a ``threading.local``: live models, scratch tensors) stays behind when the object
    is pickled to a worker, and the worker starts an empty one."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class Scorer(PerThread):
    """Score a state on ``tasks``, each task with its head.

    ``source``: an :class:`~fusionkit.models.experts.Expert` (each thread loads its own live model from it) or an
    :class:`~fusionkit.models.evaluator.Evaluator` (use that live model). ``heads[task]`` is the head used for that
    task; ``None`` means the state carries its own head (experts that share one label space, fused head included).
    ``split``: the split a call scores (validation unless told; dev splits are cut to ``dev_examples``).
    ``precision``: float32, bfloat16 or auto (:func:`fusionkit.core.runtime.resolve_precision`), the same for
    every candidate. ``measure``: what a call returns (module docstring).
    """

    def __init__(self, source, tasks: dict[str, Task], heads: dict[str, dict] | None = None, *,
                 measure: str = "score", split: str = "validation", dev_examples: int | None = None,
                 max_length: int = 128, batch_size: int = 128, device="auto", precision: str = "float32"):
        if measure not in MEASURES:
            raise FusionkitError(f"measure={measure!r}; fix: use one of {', '.join(MEASURES)}")
        if heads is not None and set(tasks) - set(heads):
            raise FusionkitError(f"no head for task(s) {sorted(set(tasks) - set(heads))}; "
                                 "fix: pass heads={task: head}")
        for name, task in tasks.items():
            if split == "validation" and "validation" not in task.data:
                raise FusionkitError(f"task {name!r} has no validation split to search on; fix: give it one "
                                     "(tasks.task_from carves one from train)")
        self.shared_evaluator = source if isinstance(source, Evaluator) else None
        self.model = None if self.shared_evaluator is not None else source
        keep_whole = split not in EVAL_SPLITS  # scoring a training split: keep the task as it is
        self.tasks = {n: t if keep_whole else eval_only(t, dev_examples) for n, t in tasks.items()}
        self.heads, self.measure, self.split = heads, measure, split
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        device_obj = self.shared_evaluator.device if self.shared_evaluator is not None else pick_device(device)
        self.precision = resolve_precision(precision, device_obj)
        self._local = threading.local()

    def evaluator(self) -> Evaluator:
        """The live model of this thread (built on first use, then reused), or the shared one."""
        if self.shared_evaluator is not None:
            return self.shared_evaluator
        ev = getattr(self._local, "evaluator", None)
        if ev is None:
            model, tokenizer = self.model.load()
            ev = evaluator_for(model, tokenizer, max_length=self.max_length, batch_size=self.batch_size,
                           device=self.device, precision=self.precision)
            self._local.evaluator = ev
        return ev

    def head(self, task: str) -> dict | None:
        return None if self.heads is None else self.heads[task]

    def reachable_rows(self) -> dict[str, torch.Tensor]:
        """``{name of the input embedding table: the token ids the dev data uses}``.

        A forward pass on the dev data reads only these rows of the table, so a candidate's other rows need not
        be built to score it (the table is about half of a small encoder's parameters). Empty when the table is
        shared with an output layer (tied LM heads read every row)."""
        rows = getattr(self._local, "rows", None)
        if rows is None:
            ev = self.evaluator()
            emb = ev.model.get_input_embeddings().weight
            out = ev.model.get_output_embeddings() if hasattr(ev.model, "get_output_embeddings") else None
            rows = {}
            if out is None or out.weight is not emb:
                name = next(n for n, p in ev.model.named_parameters() if p is emb)
                ids = [b["input_ids"].reshape(-1) for t in self.tasks.values() for b in ev.encode(t, "validation").batches]
                rows[name] = torch.cat(ids).unique().cpu()
            self._local.rows = rows
        return rows

    def scores(self, state: dict, split: str | None = None) -> dict[str, float]:
        """``{task: metric}`` of ``state`` on ``split`` (default: the scorer's)."""
        ev, split = self.evaluator(), split or self.split
        return {name: ev.score(task, split, params=state, head=self.head(name), precision=self.precision)
                for name, task in self.tasks.items()}

    def correct(self, state: dict, split: str | None = None) -> dict[str, np.ndarray]:
        """``{task: per-example 0/1 correctness}`` of ``state`` on ``split``: the input of a paired bootstrap
        (:func:`fusionkit.core.intervals.paired_bootstrap`) between two states scored on the same examples."""
        ev, split = self.evaluator(), split or self.split
        return {name: ev.correct(task, split, params=state, head=self.head(name), precision=self.precision)
                for name, task in self.tasks.items()}

    def losses_and_scores(self, state: dict, split: str | None = None) -> dict:
        """``{"loss": {task: CE}, "accuracy": {task: acc}, "mean_loss", "mean_accuracy"}``, one forward per task."""
        ev, split = self.evaluator(), split or self.split
        loss, acc = {}, {}
        for name, task in self.tasks.items():
            loss[name], acc[name] = ev.loss_and_score(task, split, params=state, head=self.head(name),
                                                      precision=self.precision)
        return {"loss": loss, "accuracy": acc, "mean_loss": float(np.mean(list(loss.values()))),
                "mean_accuracy": float(np.mean(list(acc.values())))}

    def __call__(self, state: dict, split: str | None = None):
        """The mean score over tasks (``measure="score"``) or the losses-and-scores dict (``"both"``)."""
        if self.measure == "both":
            return self.losses_and_scores(state, split)
        s = self.scores(state, split)
        return sum(s.values()) / len(s)
