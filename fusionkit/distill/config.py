"""Context-distillation settings: one frozen dataclass, a named setting per profile."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..core.errors import DistillError

METHODS = ("no_update", "finetune", "distill", "prepend")
CALLBACK_KEYS = ("step", "kl", "heldout_kl", "explicit_acc", "implicit_acc")


@dataclass(frozen=True)
class DistillConfig:
    continuations: int = 5  # trained on, per entity
    heldout: int = 1  # extra continuations per entity, never trained on (held-out KL)
    max_new_tokens: int = 32
    top_p: float = 0.9
    temperature: float = 1.0
    transfer: str = "sample"  # how the transfer set is made: sample (continue the definition) | chat (ask for a sentence)
    steps: int = 5  # per continuation
    lr: float = 3e-4  # chosen on dev entities from 3e-5 ... 1e-3 (benchmarks/distill_full.py)
    tau: float = 2.0
    reset_optimizer: bool = True  # a fresh AdamW for every continuation, as in the paper
    ft_lr: float | None = None  # the fine-tune baseline's own lr (None = lr); chosen on dev like lr
    ft_steps: int = 10  # the fine-tune baseline: this many steps on the definition under one AdamW (reference: 5-10)
    params: str = "all"  # all | mlp | layers:A-B (inclusive)
    clip: float = 1.0  # max gradient norm; 0 = no clipping
    after_mention: bool = False  # distil only positions after the entity mention
    weight_decay: float = 0.0  # >0 would move weights even at zero loss
    probe_every: int = 5  # log probe accuracy and held-out KL every this many steps (0 = never)
    other_entities: int = 8  # other entities whose probes measure specificity (single-entity mode)
    facts: int = 30  # well-known-fact probes for specificity
    limit: int | None = None  # entities per run (None = all)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


SETTINGS = {
    "smoke": DistillConfig(continuations=2, heldout=1, max_new_tokens=16, steps=2, lr=1e-4, probe_every=2,
                           other_entities=1, facts=6, limit=2, ft_steps=5),
    "full": DistillConfig(),
}


def settings(profile: str = "smoke", **changes) -> DistillConfig:
    if profile not in SETTINGS:
        raise DistillError(f"unknown profile {profile!r}; fix: use one of {', '.join(SETTINGS)}")
    cfg = replace(SETTINGS[profile], **{k: v for k, v in changes.items() if v is not None})
    if cfg.transfer not in ("sample", "chat"):
        raise DistillError(f"transfer={cfg.transfer!r}; fix: use sample or chat")
    if cfg.continuations < 1 or cfg.steps < 1 or cfg.ft_steps < 1 or cfg.lr <= 0 or cfg.tau <= 0 or \
            (cfg.ft_lr is not None and cfg.ft_lr <= 0):
        raise DistillError("continuations, steps and ft_steps must be >= 1, lr, ft_lr and tau > 0")
    return cfg
