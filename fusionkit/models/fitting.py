"""The supervised training loop every classifier in the kit is trained with: one task (an expert) or several
sharing one body (the multi-task model).

The usual BERT fine-tuning recipe (:class:`~fusionkit.models.optimiser.Optimiser`: AdamW, warm-up then decay,
clipping). Each epoch visits every task's training examples once
in seeded random batches; with several tasks, the batches of all tasks are interleaved in a seeded random order,
so a multi-task model sees the union of the tasks' data for the same number of steps as the experts together.
With one task the batch order is exactly that of a plain fine-tune.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.tasks import Task
from .optimiser import Optimiser


@dataclass
class Fit:
    """What a training run did: per-step losses, examples seen per epoch, steps and seconds."""

    losses: list[float]
    examples: int
    steps: int
    seconds: float

    @property
    def final_loss(self) -> float:
        tail = self.losses[-10:]
        return round(sum(tail) / len(tail), 4)


def fit(models: dict, tokenizer, tasks: dict[str, Task], max_length: int, epochs: int, batch_size: int, lr: float,
        seed: int, device, desc: str = "fine-tune", quiet: bool = False) -> Fit:
    """Train ``models[task]`` on ``tasks[task]`` for every task; the models may share modules (a body), whose
    parameters then appear once in the optimiser."""
    enc = {t: tokenizer(list(task.data["train"]["text"]), truncation=True, max_length=max_length)
           for t, task in tasks.items()}
    labels = {t: list(task.data["train"]["label"]) for t, task in tasks.items()}
    sizes = {t: len(v) for t, v in labels.items()}
    total = sum(math.ceil(n / batch_size) for n in sizes.values()) * epochs
    for m in models.values():
        m.to(device).train()
    opt = Optimiser({id(p): p for m in models.values() for p in m.parameters()}.values(), lr, total)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    losses = []
    with tqdm(total=total, desc=desc, disable=quiet, leave=False) as bar:
        for _ in range(epochs):
            batches = [(t, idx) for t in tasks for idx in torch.randperm(sizes[t], generator=gen).split(batch_size)]
            if len(tasks) > 1:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
            for t, idx in batches:
                feats = [{k: enc[t][k][i] for k in enc[t].keys()} for i in idx.tolist()]
                batch = {k: v.to(device) for k, v in tokenizer.pad(feats, return_tensors="pt").items()}
                batch["labels"] = torch.tensor([labels[t][i] for i in idx.tolist()], device=device)
                losses.append(opt.step(models[t](**batch).loss))
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return Fit(losses, sum(sizes.values()), total, time.perf_counter() - t0)
