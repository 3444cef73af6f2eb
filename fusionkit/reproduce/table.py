"""A row of the reproduction table: one published claim "A beats B", the kit's measurement of A − B with its 95%
interval, and the verdict the interval allows (:func:`fusionkit.core.intervals.verdict`).

The interval is over test examples (or probes) by a paired bootstrap: both systems are scored on the same
examples, so the resampling keeps each example's pair together. Where a system is itself random (a search's seed),
its per-example scores are first averaged over seeds, so the row compares the method's expected accuracy; the
spread over seeds is reported beside it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.intervals import paired_bootstrap, seed_interval, verdict

REASONS = {
    "reproduces": "the whole interval is above 0",
    "does not": "the whole interval is below 0: B beats A here",
    "inconclusive": "the interval contains 0: the difference is within test noise",
}


@dataclass
class Row:
    claim: str  # "RegMean > average"
    paper: str  # the paper's setting and what it reports
    setting: str  # the kit's setting
    a: str
    b: str
    a_score: float
    b_score: float
    interval: dict  # a − b: diff, lo, hi, n
    over: str  # what the interval resamples
    verdict: str
    reason: str
    choices: dict = field(default_factory=dict)  # what was chosen on dev, and how
    seeds: dict | None = None  # per-seed differences and their t interval, for random systems
    profile: str = "smoke"
    unit: str = "points"  # how A − B is shown: "points" (accuracy × 100) or "nats" (log-likelihood per token)

    def to_dict(self) -> dict:
        return asdict(self)


def mean_over(scores: dict | np.ndarray) -> float:
    """Macro mean of ``{task: per-example scores}`` (or the mean of one array)."""
    if isinstance(scores, dict):
        return float(np.mean([np.mean(v) for v in scores.values()]))
    return float(np.mean(scores))


def seed_mean(runs: list) -> dict | np.ndarray:
    """Per-example scores averaged over seeds: ``[{task: array}, ...]`` -> ``{task: array}``."""
    if isinstance(runs[0], dict):
        return {t: np.mean([r[t] for r in runs], axis=0) for t in runs[0]}
    return np.mean(runs, axis=0)


def compare(claim: str, a: str, a_scores, b: str, b_scores, *, paper: str, setting: str,
            over: str = "test examples", choices: dict | None = None, profile: str = "smoke",
            a_seeds: list | None = None, b_seeds: list | None = None, note: str = "", margin: float = 0.0,
            unit: str = "points") -> Row:
    """The row for "``a`` beats ``b``" from per-example scores (0/1 accuracy, or any per-example score where
    higher is better), ``{task: array}`` or one array, in the same example order.

    ``a_seeds`` / ``b_seeds``: per-seed per-example scores of a random system; the row then uses their mean per
    example and reports the per-seed differences with a t interval. ``margin`` > 0 turns the claim into
    "``a`` is no more than ``margin`` below ``b``" (non-inferiority): the verdict tests a − b + margin > 0.
    ``unit``: ``"points"`` for accuracies (shown × 100), ``"nats"`` for log-likelihoods per token (shown as they are).
    """
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}; fix: use one of {', '.join(UNITS)}")
    if a_seeds is not None:
        a_scores = seed_mean(a_seeds)
    if b_seeds is not None:
        b_scores = seed_mean(b_seeds)
    ci = paired_bootstrap(a_scores, b_scores)
    v = verdict({"lo": ci["lo"] + margin, "hi": ci["hi"] + margin})
    seeds = None
    if a_seeds is not None or b_seeds is not None:
        n = len(a_seeds or b_seeds)
        diffs = [mean_over(a_seeds[i] if a_seeds else a_scores) - mean_over(b_seeds[i] if b_seeds else b_scores)
                 for i in range(n)]
        seeds = {"diffs": [round(d, 4) for d in diffs], **{k: round(x, 4) if not math.isnan(x) else None
                                                          for k, x in seed_interval(diffs).items() if k != "n"},
                 "n": n}
    reason = REASONS[v] if not margin else \
        f"{REASONS[v].replace(' 0', f' −{margin * UNITS[unit]:.3g} {unit}')} (the margin)"
    reason += f"; {note}" if note else ""
    return Row(claim, paper, setting, a, b, round(mean_over(a_scores), 4), round(mean_over(b_scores), 4),
               {k: round(x, 4) if isinstance(x, float) else x for k, x in ci.items()}, over, v, reason,
               choices or {}, seeds, profile, unit)


UNITS = {"points": 100.0, "nats": 1.0}  # unit -> the scale a difference is shown at


def fmt_interval(ci: dict, scale: float = 100.0) -> str:
    digits = 1 if scale >= 100 else 3
    return f"{ci['diff'] * scale:+.{digits}f} [{ci['lo'] * scale:+.{digits}f}, {ci['hi'] * scale:+.{digits}f}]"


def to_markdown(rows: list[Row]) -> str:
    """The table: claim, settings, A and B, A − B (points or nats) with its interval, verdict and reason."""
    unit = {r.unit for r in rows}
    unit = unit.pop() if len(unit) == 1 else "points or nats"
    out = [f"| claim | paper's setting | kit's setting | A | B | A − B, {unit} [95% CI] | verdict | why |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scale = UNITS[r.unit]
        digits = ".1f" if scale >= 100 else ".3f"
        seeds = ""
        if r.seeds:
            lo, hi = r.seeds.get("lo"), r.seeds.get("hi")
            span = f" [{lo * scale:+{digits}}, {hi * scale:+{digits}}]" if lo is not None else ""
            seeds = f"; over {r.seeds['n']} seeds {r.seeds['mean'] * scale:+{digits}}{span}"
        chosen = "; ".join(f"{k}: {v}" for k, v in r.choices.items())
        out.append(f"| {r.claim} | {r.paper} | {r.setting}{' (chosen on dev: ' + chosen + ')' if chosen else ''} "
                   f"| {r.a} {r.a_score:.3f} | {r.b} {r.b_score:.3f} | {fmt_interval(r.interval, scale)} "
                   f"over {r.interval['n']} {r.over}{seeds} | **{r.verdict}** | {r.reason} |")
    return "\n".join(out)
