"""The protocol every search follows, in one place: options checked before any model loads, candidates chosen on
dev data only, test looked at once for the final pick, and the same baselines on the same dev data.

* :func:`check_search_options` - a budget below 1, an unknown nevergrad optimiser, F or CR outside (0, 1].
* :func:`test_scores` - ``{"dev", "test"}`` of a state: the one look at test a search (or a baseline) gets.
* :func:`expert_state` / :func:`best_single_expert` - an expert as the scorer sees it, and the best one by dev.
* :func:`to_merged` - a searched state as a :class:`~fusionkit.merging.zoo_merge.Merged`, saved like a merge.
"""
from __future__ import annotations

import difflib

from ..core.errors import SearchError
from ..merging.zoo_merge import Merged
from ..models.experts import Expert
from ..models.heads import split_head
from ..models.scorer import Scorer

COMMON_OPTIMIZERS = ("NGOpt", "CMA", "DE", "TwoPointsDE", "PSO", "OnePlusOne", "RandomSearch")


def check_optimizer(name: str) -> None:
    import nevergrad as ng

    if name not in ng.optimizers.registry:
        close = difflib.get_close_matches(name, list(ng.optimizers.registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SearchError(f"unknown nevergrad optimiser {name!r}{hint}; fix: use one of {', '.join(COMMON_OPTIMIZERS)}"
                          f" or any of the {len(ng.optimizers.registry)} names in nevergrad.optimizers.registry")


def check_search_options(budget: int | None = None, optimizer: str | None = None, F: float | None = None,
                         CR: float | None = None) -> None:
    """Fail before any model is loaded: a budget below 1, an unknown optimiser, F or CR outside (0, 1]."""
    if budget is not None and budget < 1:
        raise SearchError(f"budget={budget}: a search needs at least 1 evaluation; fix: budget >= 1")
    if optimizer is not None:
        check_optimizer(optimizer)
    for name, value in (("F", F), ("CR", CR)):
        if value is not None and not 0 < value <= 1:
            raise SearchError(f"{name}={value} is outside (0, 1]; fix: typical values are F=0.5, CR=0.5")


def test_scores(scorer: Scorer, state: dict) -> dict:
    """``{"dev": mean dev score, "test": {task: score}}``: the one look at test a search gets, for its final pick."""
    return {"dev": round(scorer(state), 4), "test": {t: round(s, 4) for t, s in scorer.scores(state, "test").items()}}


def expert_state(expert: Expert, scorer: Scorer) -> dict:
    """An expert as the scorer sees it: whole (heads fused, the state carries its head) or its body."""
    state = expert.state_dict()
    return state if scorer.heads is None else split_head(state, expert.head_prefixes)[0]


def best_single_expert(experts: list[Expert], scorer: Scorer) -> tuple[str, dict]:
    """The baseline every search must beat: ``(label, test_scores)`` of the expert with the best dev score."""
    singles = {e.name: scorer(expert_state(e, scorer)) for e in experts}
    best = max(singles, key=singles.get)
    chosen = next(e for e in experts if e.name == best)
    return f"best single expert ({best})", test_scores(scorer, expert_state(chosen, scorer))


def to_merged(method: str, options: dict, state: dict, scorer: Scorer, experts: list[Expert],
              weights=None) -> Merged:
    """A searched state as a :class:`~fusionkit.merging.zoo_merge.Merged`, so it saves like ``fusionkit merge --out``."""
    prefixes = experts[0].head_prefixes
    if scorer.heads is None:  # the state carries the (shared) head
        body, head = split_head(state, prefixes)
        heads, shared = {t: head for t in scorer.tasks}, True
    else:
        body, heads, shared = state, dict(scorer.heads), False
    full = split_head(experts[0].state_dict(), prefixes)[0]  # non-float buffers (position ids) come along
    return Merged(method, options, {**full, **body}, heads, shared, experts, weights=weights)
