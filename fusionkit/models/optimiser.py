"""The kit's fine-tuning update, one home for every trainer: the classifier experts and the multi-task model
(:mod:`fusionkit.models.fitting`), the causal-LM experts (:mod:`fusionkit.models.lm_training`) and ensemble
distillation (:mod:`fusionkit.distill.ensemble`).

The usual BERT fine-tuning recipe (Devlin et al. 2019): AdamW with weight decay 0.01, a linear warm-up over the
first 10% of the steps then linear decay to 0, gradients clipped to norm 1. Each trainer's cache key hashes this
module's code (:func:`~fusionkit.core.versioning.code_version`), so a change here trains again what it trained.
"""
from __future__ import annotations

import torch


class Optimiser:
    """AdamW + warm-up/decay schedule + clipping over ``params`` for ``steps`` updates; ``step(loss)`` is one."""

    def __init__(self, params, lr: float, steps: int):
        from transformers import get_linear_schedule_with_warmup

        self.params = list(params)
        # fused: one kernel for the whole update instead of a dozen per tensor - on 2 CPU cores the step's
        # optimiser share falls from 0.15 to 0.02 s of 0.63 s (MiniLM, batch 16); the same AdamW up to rounding.
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01, fused=True)
        self.sched = get_linear_schedule_with_warmup(self.opt, int(0.1 * steps), steps)

    def step(self, loss: torch.Tensor) -> float:
        """Back-propagate ``loss``, clip the gradients, update, advance the schedule; returns the loss's value."""
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()
