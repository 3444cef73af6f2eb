"""Distillation and its fine-tuning baseline: targets (the student's input and the teacher's distributions,
computed once), the τ²·KL loss over continuation positions, parameter subsets and the training loop.

    L = τ² / |P| · Σ_{i∈P} KL( softmax(z_t,i / τ) ‖ softmax(z_s,i / τ) )      (Padmanabhan et al. 2023, eq. 1)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core.errors import DistillError
from .config import CALLBACK_KEYS, DistillConfig
from .entities import Entity
from .probes import context_ids, token_ids

@dataclass
class Target:
    """One continuation ready for distillation: the student's input and the teacher's fixed distributions."""

    entity: str
    text: str
    ids: torch.Tensor  # [1, L] the student's input (the continuation alone)
    positions: torch.Tensor  # student positions in P
    teacher_logp: torch.Tensor  # [|P|, V] log softmax(z_t / τ), computed once


def _mention_end(tokenizer, text: str, name: str) -> int:
    """Index of the first token after the first mention of ``name`` in ``text`` (0 if it is not there)."""
    at = text.lower().find(name.lower())
    if at < 0:
        return 0
    end = at + len(name)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sum(1 for s, _ in offsets if s < end)


@torch.no_grad()
def make_target(teacher, tokenizer, entity: Entity, continuation: str, cfg: DistillConfig) -> Target:
    d, c = context_ids(tokenizer, entity.definition, continuation)
    if len(c) < 2:
        raise DistillError(f"continuation {continuation!r} of {entity.name!r} has fewer than 2 tokens")
    start = 0
    if cfg.after_mention:
        text = (" " + continuation.lstrip()) if d else continuation
        start = min(max(0, _mention_end(tokenizer, text, entity.name) - 1), len(c) - 2)
    dev = next(teacher.parameters()).device
    # Student position i (i < L-1) predicts token i+1 of c; the teacher sees it at len(d) + i.
    positions = torch.arange(start, len(c) - 1)
    logits = teacher(input_ids=torch.tensor([d + c], device=dev)).logits[0, len(d) + positions.to(dev)]
    return Target(entity.name, continuation, torch.tensor([c]), positions,
                  F.log_softmax(logits.float() / cfg.tau, -1))


def prepare(teacher, tokenizer, entity: Entity, continuations: list[str], cfg: DistillConfig) -> list[Target]:
    if not continuations:
        raise DistillError(f"empty transfer set for {entity.name!r}; fix: sample at least one continuation "
                         "(continuations >= 1) or pass non-empty texts")
    teacher.eval()
    return [make_target(teacher, tokenizer, entity, c, cfg) for c in continuations]


def kl_loss(student_logits: torch.Tensor, teacher_logp: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²/|P| Σ_i KL(p_t,i ‖ p_s,i), both at temperature τ (``batchmean`` divides by |P|)."""
    s = F.log_softmax(student_logits.float() / tau, -1)
    return tau ** 2 * F.kl_div(s, teacher_logp, log_target=True, reduction="batchmean")


def target_kl(model, target: Target, tau: float) -> torch.Tensor:
    dev = next(model.parameters()).device
    logits = model(input_ids=target.ids.to(dev)).logits[0, target.positions.to(dev)]
    return kl_loss(logits, target.teacher_logp.to(dev), tau)


@torch.no_grad()
def position_kl(model, target: Target, tau: float = 2.0) -> torch.Tensor:
    """τ² KL(p_t ‖ p_s) at each distilled position (its mean is the loss): where the definition matters."""
    dev = next(model.parameters()).device
    s = F.log_softmax(model(input_ids=target.ids.to(dev)).logits[0, target.positions.to(dev)].float() / tau, -1)
    t = target.teacher_logp.to(dev)
    return tau ** 2 * (t.exp() * (t - s)).sum(-1).cpu()


def select_params(model, which: str = "all") -> list[torch.nn.Parameter]:
    """The parameters that train: ``all``, ``mlp`` (MLP blocks only) or ``layers:A-B`` (decoder layers A..B)."""
    if which == "all":
        keep = lambda name: True  # noqa: E731
    elif which == "mlp":
        keep = lambda name: ".mlp." in name  # noqa: E731
    elif which.startswith("layers:"):
        try:
            lo, hi = (int(x) for x in which[7:].split("-"))
        except ValueError:
            raise DistillError(f"bad params {which!r}; fix: layers:A-B, e.g. layers:10-20") from None
        keep = lambda name: any(f".layers.{i}." in name for i in range(lo, hi + 1))  # noqa: E731
    else:
        raise DistillError(f"unknown params {which!r}; fix: all, mlp or layers:A-B")
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        if p.requires_grad:
            chosen.append(p)
    if not chosen:
        raise DistillError(f"params {which!r} selects no parameter of this model")
    return chosen


def _train(student, batches, cfg: DistillConfig, loss_fn, on_probe=None, callback=None, step0: int = 0):
    """Shared loop: ``batches`` is a list of items, each trained ``cfg.steps`` steps (optimizer reset per item)."""
    params = select_params(student, cfg.params)
    student.train()
    opt, history, step = None, [], step0
    for item in batches:
        if opt is None or cfg.reset_optimizer:
            # fused: one kernel for the whole update; on SmolLM2-135M (2 CPU cores) a step's AdamW falls from
            # 0.62 to 0.08 s - the same AdamW up to float rounding.
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        for _ in range(cfg.steps):
            loss = loss_fn(student, item)
            # At exactly zero loss the student already matches; the gradient there is rounding noise that
            # Adam's normalisation would blow up into lr-sized steps, so do not step at all.
            if float(loss.detach()) != 0.0:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                opt.step()
            entry = {"step": step, "kl": float(loss.detach()), "entity": getattr(item, "entity", None)}
            step += 1
            if on_probe is not None and cfg.probe_every and step % cfg.probe_every == 0:
                entry.update(on_probe(student))
            history.append(entry)
            if callback is not None:
                callback({k: entry[k] for k in CALLBACK_KEYS if k in entry})
    student.eval()
    return history


def distill(student, targets: list[Target], cfg: DistillConfig, on_probe=None, callback=None, step0: int = 0):
    """Context distillation on ``targets`` in the given order; returns one ``{"step", "kl", ...}`` per step."""
    return _train(student, targets, cfg, lambda m, t: target_kl(m, t, cfg.tau), on_probe, callback, step0)


def kl_drop(curve: list[dict], steps: int) -> float:
    """Mean fall of the KL on a continuation while the student trains on it: KL(first step) − KL(last step).

    The curve runs through many continuations (and entities), so its first and last points are on different
    text; comparing within each block of ``steps`` steps on one continuation is the like-for-like reading.
    """
    blocks = [curve[i:i + steps] for i in range(0, len(curve), steps)]
    return sum(b[0]["kl"] - b[-1]["kl"] for b in blocks) / len(blocks)


def finetune_definition(student, tokenizer, entity: Entity, cfg: DistillConfig) -> list[dict]:
    """The fine-tuning baseline as in the reference code: LM loss on the definition alone, ``cfg.ft_steps`` steps
    under one AdamW at its own lr ``cfg.ft_lr`` (chosen on dev like distillation's; default ``cfg.lr``) - not
    distillation's schedule of resets, which would hand the baseline a different optimiser."""
    ids = torch.tensor([token_ids(tokenizer, entity.definition)], device=next(student.parameters()).device)
    if ids.shape[1] < 2:
        raise DistillError(f"definition of {entity.name!r} is too short to fine-tune on")
    own = replace(cfg, lr=cfg.ft_lr or cfg.lr, steps=cfg.ft_steps, reset_optimizer=False)
    hist = _train(student, [entity], own, lambda m, _: m(input_ids=ids, labels=ids).loss)
    return [{"step": h["step"], "loss": h["kl"]} for h in hist]


# ------------------------------------------------------------------------------------------- a whole run
