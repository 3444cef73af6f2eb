"""Fast scoring of a model - or of any state dict - on a task, with one live model and data tokenised once.

Merging and search evaluate hundreds of candidate weight sets. Reloading or deep-copying a model for each
would dominate the cost, so :class:`Evaluator` keeps a single live model and runs candidates through
``torch.func.functional_call``: the candidate's tensors stand in for the model's parameters during the
forward pass, nothing is copied. Heads are passed the same way, which is how one body is scored on tasks
with different label spaces (the classifier of task *j* on the body of expert *i*).

Each (task, split) is tokenised once, sorted by length so batches carry little padding, and kept.
``precision="auto"`` scores under bfloat16 autocast where the hardware runs it natively (see
:func:`fusionkit.core.runtime.resolve_precision`); the default is float32.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from ..core.runtime import pick_device, resolve_precision
from ..data.tasks import Task
from .heads import head_prefixes


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy (nats) of the labels under the logits: the smooth twin of accuracy (landscapes)."""
    return float(torch.nn.functional.cross_entropy(logits.float(), labels.long()))


METRICS = {"accuracy": accuracy}


@dataclass
class Encoded:
    """A tokenised split: length-sorted batches and the labels in original order."""

    batches: list[dict]
    order: torch.Tensor  # position in the original split of each sorted example
    labels: torch.Tensor


class Evaluator:
    """Score state dicts on tasks with one live model.

    >>> ev = Evaluator(model, tokenizer, max_length=64)
    >>> ev.score(task, "validation", params=merged_state, head=heads["sentiment"])
    """

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 128, device="auto",
                 limit: int | None = None, precision: str = "float32"):
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.limit = limit
        self.head_prefixes = head_prefixes(model)
        self._encoded: dict = {}

    # -------------------------------------------------------------------------------- data
    def encode(self, task: Task, split: str) -> Encoded:
        ds = task.data[split]
        key = (task.name, split, ds._fingerprint, self.limit)
        if key not in self._encoded:
            if self.limit is not None and len(ds) > self.limit:
                ds = ds.select(range(self.limit))
            enc = self.tokenizer(list(ds["text"]), truncation=True, max_length=self.max_length)
            lengths = np.array([len(ids) for ids in enc["input_ids"]])
            order = np.argsort(-lengths, kind="stable")
            batches = []
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                feats = [{k: enc[k][i] for k in enc.keys()} for i in idx]
                batch = self.tokenizer.pad(feats, return_tensors="pt")
                batches.append({k: v.to(self.device) for k, v in batch.items()})
            self._encoded[key] = Encoded(batches, torch.as_tensor(order), torch.as_tensor(ds["label"]))
        return self._encoded[key]

    # -------------------------------------------------------------------------------- scoring
    def autocast(self, precision: str | None = None):
        """bfloat16 autocast if ``precision`` (default: this evaluator's) resolves to it; otherwise nothing, so a
        caller's own autocast still applies."""
        precision = self.precision if precision is None else resolve_precision(precision, self.device)
        if precision == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def logits(self, task: Task, split: str = "validation", params: dict | None = None,
               head: dict | None = None, precision: str | None = None) -> torch.Tensor:
        """Logits ``[N, C]`` (float32) in the split's order. ``params`` and ``head`` replace the live model's
        tensors; ``precision`` overrides the evaluator's for this call."""
        enc = self.encode(task, split)
        swap = {**(params or {}), **(head or {})}
        swap = {k: v.to(self.device) for k, v in swap.items()}
        outs = []
        with self.autocast(precision):
            for batch in enc.batches:
                if swap:
                    out = functional_call(self.model, swap, args=(), kwargs=batch, strict=False)
                else:
                    out = self.model(**batch)
                outs.append(out.logits.float())
        sorted_logits = torch.cat(outs).cpu()
        logits = torch.empty_like(sorted_logits)
        logits[enc.order] = sorted_logits
        return logits

    def score(self, task: Task, split: str = "validation", params: dict | None = None,
              head: dict | None = None, precision: str | None = None) -> float:
        logits = self.logits(task, split, params, head, precision)
        return METRICS[task.metric](logits, self.encode(task, split).labels)

    def correct(self, task: Task, split: str = "validation", params: dict | None = None,
                head: dict | None = None, precision: str | None = None) -> np.ndarray:
        """Per example, in the split's order: 1.0 where the argmax is the label - what a paired bootstrap resamples."""
        logits = self.logits(task, split, params, head, precision)
        return (logits.argmax(-1) == self.encode(task, split).labels).float().numpy()

    def loss_and_score(self, task: Task, split: str = "validation", params: dict | None = None,
                       head: dict | None = None, precision: str | None = None) -> tuple[float, float]:
        """``(mean cross-entropy, metric)`` from one forward pass over the split."""
        logits = self.logits(task, split, params, head, precision)
        labels = self.encode(task, split).labels
        return cross_entropy(logits, labels), METRICS[task.metric](logits, labels)

    def ensemble_logits(self, task: Task, split: str, members: list[tuple[dict, dict | None]]) -> torch.Tensor:
        """The logit ensemble's logits: the mean of each member's (N forward passes)."""
        return torch.stack([self.logits(task, split, p, h) for p, h in members]).mean(0)

    def ensemble_score(self, task: Task, split: str, members: list[tuple[dict, dict | None]]) -> float:
        """Score of the logit ensemble (:meth:`ensemble_logits`)."""
        return METRICS[task.metric](self.ensemble_logits(task, split, members), self.encode(task, split).labels)


def evaluate(model, tokenizer, task: Task, splits=("validation", "test"), max_length: int = 128,
             limit: int | None = None, device="auto") -> dict[str, float]:
    """Score a model on a task: ``{split: metric}``. For many candidates, build one :class:`Evaluator`."""
    ev = Evaluator(model, tokenizer, max_length=max_length, limit=limit, device=device)
    return {split: ev.score(task, split) for split in splits}
