"""The search objective: the dev score of a candidate weight set - fast, honest, and safe to run in parallel.

Gradient-free searches (DFWE, Evolver) score hundreds of candidates, so the objective must cost little more
than the forward pass itself:

* one live model per thread; candidate tensors go in through ``torch.func.functional_call``
  (:class:`~fusionkit.evaluate.Evaluator`) - never a deep copy, never a reload;
* each dev split is tokenised once per thread and kept;
* repeated candidates are memoised by the search loop (:func:`run_batches` callers), so they cost nothing.

Honesty: candidates are scored on the ``validation`` split only; a search reports ``test`` once, for its final
choice (:meth:`Scorer.scores` with ``split="test"``).

Scale-out: a :class:`Scorer` pickles to a few hundred kB (the expert's *path*, dev/test data, heads), and each
worker - thread, process or dask worker - builds its own live model on first use. ``functional_call`` swaps
tensors into the module for the duration of a forward, so two threads must not share one model: the live model
is thread-local. Any object with ``submit(fn, arg) -> future`` and ``future.result()`` works as the executor
(``concurrent.futures`` pools, a ``dask.distributed.Client``).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

import datasets
import torch

from .evaluate import Evaluator
from .experts import Expert
from .runtime import pick_device, resolve_precision
from .tasks import Task

EVAL_SPLITS = ("validation", "test")


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
    """Mean score over ``tasks`` of a state dict, each task with its head.

    ``heads[task]`` is the head used for that task; ``None`` means the state carries its own head (experts that
    share one label space and were searched or merged head included). ``dev_examples`` cuts each dev split
    (the smoke profile scores candidates on 60 examples per task; test is never cut). ``precision``: float32,
    bfloat16 or auto (:func:`fusionkit.runtime.resolve_precision`), the same for every candidate.
    """

    def __init__(self, model: Expert, tasks: dict[str, Task], heads: dict[str, dict] | None = None,
                 max_length: int = 128, batch_size: int = 128, dev_examples: int | None = None, device="auto",
                 precision: str = "float32"):
        for name, task in tasks.items():
            if "validation" not in task.data:
                raise ValueError(f"task {name!r} has no validation split to search on; fix: give it one "
                                 "(tasks.task_from carves one from train)")
        self.model = model
        self.tasks = {name: eval_only(task, dev_examples) for name, task in tasks.items()}
        self.heads = heads
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self.precision = resolve_precision(precision, pick_device(device))
        self._local = threading.local()

    def evaluator(self) -> Evaluator:
        """This thread's live model (built on first use, then reused)."""
        ev = getattr(self._local, "evaluator", None)
        if ev is None:
            model, tokenizer = self.model.load()
            ev = Evaluator(model, tokenizer, max_length=self.max_length, batch_size=self.batch_size,
                           device=self.device, precision=self.precision)
            self._local.evaluator = ev
        return ev

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

    def scores(self, state: dict, split: str = "validation") -> dict[str, float]:
        ev = self.evaluator()
        return {name: ev.score(task, split, params=state, head=None if self.heads is None else self.heads[name])
                for name, task in self.tasks.items()}

    def __call__(self, state: dict, split: str = "validation") -> float:
        s = self.scores(state, split)
        return sum(s.values()) / len(s)


# ------------------------------------------------------------------------------------------ executors
def check_executor(executor) -> None:
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor {executor!r} has no submit(); fix: pass a concurrent.futures executor "
                        "(ThreadPoolExecutor, ProcessPoolExecutor) or a dask.distributed Client")


def map_ordered(fn: Callable, items: Iterable, executor=None) -> list:
    """``[fn(x) for x in items]``, run on ``executor`` when given; results always in input order, so a seeded
    search takes the same path whatever ran its evaluations."""
    items = list(items)
    if executor is None:
        return [fn(x) for x in items]
    futures = [executor.submit(fn, x) for x in items]
    return [f.result() for f in futures]


def timed(fn: Callable, *args) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0
