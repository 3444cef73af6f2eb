"""Intervals for every comparison, and the verdict they allow.

A difference of a few points between two methods means nothing without its uncertainty. Two sources:

* **over test examples** - :func:`paired_bootstrap`: both systems are scored on the *same* examples, so resample the
  examples and recompute the difference of means (paired: an example's difficulty cancels). With several tasks the
  examples are resampled within each task and the statistic is the mean over tasks of the per-task differences
  (the kit's tables report that macro mean). Percentile intervals from ``scipy.stats.bootstrap`` (Efron &
  Tibshirani 1993).
* **over seeds** - :func:`seed_interval`: the mean of a few independent runs and Student's t interval.

:func:`verdict` turns an interval for "a − b" into the reproduction table's word: the claim "a beats b"
*reproduces* when the whole interval is above zero, *does not* when it is below, and is *inconclusive* otherwise.
"""
from __future__ import annotations

import math

import numpy as np


def _as_tasks(scores) -> dict:
    return scores if isinstance(scores, dict) else {"": scores}


def paired_bootstrap(a, b, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean difference a − b and its bootstrap interval. ``a`` and ``b`` are per-example scores (accuracy as 0/1,
    or a loss) in the same example order - one array, or ``{task: array}`` for the mean over tasks."""
    from scipy.stats import bootstrap

    a, b = _as_tasks(a), _as_tasks(b)
    if set(a) != set(b):
        raise ValueError(f"the two systems were scored on different tasks: {sorted(a)} vs {sorted(b)}")
    diffs = []
    for t in a:
        x, y = np.asarray(a[t], dtype=float), np.asarray(b[t], dtype=float)
        if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
            raise ValueError(f"task {t!r}: need two equal-length 1-D score arrays of at least 2 examples, "
                             f"got {x.shape} and {y.shape}")
        diffs.append(x - y)
    diff = float(np.mean([d.mean() for d in diffs]))
    if all(np.all(d == d[0]) for d in diffs):  # no spread: the interval is the point
        return {"diff": diff, "lo": diff, "hi": diff, "n": sum(len(d) for d in diffs)}
    res = bootstrap(tuple(diffs), lambda *ds: np.mean([d.mean() for d in ds]), n_resamples=resamples,
                    confidence_level=confidence, method="percentile", vectorized=False,
                    random_state=np.random.default_rng(seed))
    return {"diff": diff, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high),
            "n": sum(len(d) for d in diffs)}


def seed_interval(values, confidence: float = 0.95) -> dict:
    """Mean over seeds and Student's t interval (n − 1 degrees of freedom); one seed gives no interval (NaN)."""
    from scipy.stats import t

    x = np.asarray(list(values), dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": len(x)}
    half = float(t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(x)}


def verdict(interval: dict) -> str:
    """For the claim "a beats b", given an interval of a − b: reproduces / does not / inconclusive."""
    lo, hi = interval["lo"], interval["hi"]
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if lo > 0:
        return "reproduces"
    if hi < 0:
        return "does not"
    return "inconclusive"
