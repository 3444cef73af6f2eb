"""Named run sizes. ``smoke`` runs on 2 CPU cores in minutes; ``full`` uses all the data (GPU or patience).

Every notebook, zoo and CLI command takes ``profile=`` by name instead of ad-hoc size flags, so a smoke
result and a full result differ only in these numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import FusionkitError


@dataclass(frozen=True)
class Profile:
    name: str
    train_examples: int | None  # per expert; None = the whole train split
    eval_examples: int | None  # per validation / test split; None = all
    few_shot: int  # target examples for few-sample transfer (DFWE)
    few_shot_epochs: int  # epochs when fine-tuning on those few examples
    max_length: int  # tokens per example
    epochs: int
    batch_size: int
    lr: float
    stats_examples: int = 128  # examples per expert for Gram / Fisher statistics
    eval_batch_size: int = 128
    search_examples: int | None = None  # dev examples per task that score a search candidate (None = all)
    source_lr: float | None = None  # the transfer zoo's source experts (None = lr); gentler, chosen on dev

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "Profile":
        return replace(self, **changes)


PROFILES = {
    "smoke": Profile("smoke", train_examples=512, eval_examples=300, few_shot=128, few_shot_epochs=10,
                     max_length=64, epochs=3, batch_size=16, lr=2e-4, stats_examples=128, search_examples=60),
    "full": Profile("full", train_examples=None, eval_examples=None, few_shot=256, few_shot_epochs=10,
                    max_length=128, epochs=3, batch_size=32, lr=5e-5, stats_examples=1000),
}


# The causal zoo's sizes (SmolLM2-135M experts on text domains), laid over the profile of the same name: texts per
# domain for training and per dev/test split, tokens per text, and the statistics and search budgets. A step of
# SmolLM2 costs ~20x one of MiniLM, so the smoke sizes keep the zoo's build under 5 minutes on 2 CPU cores.
CAUSAL = {
    "smoke": dict(train_examples=256, eval_examples=64, max_length=64, epochs=1, batch_size=8, lr=1e-4,
                  stats_examples=32, eval_batch_size=32, search_examples=24),
    "full": dict(train_examples=4000, eval_examples=500, max_length=128, epochs=1, batch_size=16, lr=1e-4,
                 stats_examples=256, eval_batch_size=16, search_examples=200),
}


def causal_profile(profile: str | Profile) -> Profile:
    """The profile with the causal zoo's sizes (:data:`CAUSAL`) for its name; a profile of another name as given."""
    profile = get_profile(profile)
    return profile.with_(**CAUSAL[profile.name]) if profile.name in CAUSAL else profile


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise FusionkitError(f"unknown profile {profile!r}; fix: use one of {', '.join(PROFILES)}")
    return PROFILES[profile]
