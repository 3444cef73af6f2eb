""""What to notice" from a run's own numbers: a sentence that states an ordering or a gain as measured, and says
so plainly when this run did not show what the method's paper leads one to expect.

A :class:`Notice` renders as Markdown in a notebook and carries ``holds`` (did the run show the expected
ordering?), so the notebook records it and its test asserts it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Notice:
    text: str
    holds: bool

    def _repr_markdown_(self) -> str:
        return f"**What to notice (computed from this run):** {self.text}"

    def __str__(self) -> str:
        return self.text


def _fmt(value: float, points: bool) -> str:
    return f"{100 * value:.1f}%" if points else f"{value:.3g}"


def ordering(values: dict[str, float], expected: list[str], what: str, margin: float = 0.0, why: str = "",
             accuracy: bool = True) -> Notice:
    """Whether ``values`` follow ``expected`` (first = largest), each step by more than ``margin``.

    >>> str(ordering({"TIES": 0.62, "average": 0.55}, ["TIES", "average"], "mean test accuracy"))
    'mean test accuracy: TIES 62.0% > average 55.0%, the expected order (TIES − average = +7.0 points).'
    """
    missing = [k for k in expected if k not in values]
    if missing:
        raise KeyError(f"ordering(): no recorded value for {missing}; recorded: {sorted(values)}")
    shown = " > ".join(f"{k} {_fmt(values[k], accuracy)}" for k in expected)
    steps = [(a, b, values[a] - values[b]) for a, b in zip(expected, expected[1:])]
    broken = [(a, b, d) for a, b, d in steps if not d > margin]
    gap = (lambda d: f"{100 * d:+.1f} points") if accuracy else (lambda d: f"{d:+.3g}")
    if not broken:
        gaps = "; ".join(f"{a} − {b} = {gap(d)}" for a, b, d in steps)
        return Notice(f"{what}: {shown}, the expected order ({gaps}).{' ' + why if why else ''}", True)
    misses = "; ".join(f"{a} − {b} = {gap(d)}" for a, b, d in broken)
    need = f" by more than {gap(margin)[1:]}" if margin else ""
    return Notice(f"{what}: in this run the expected order {' > '.join(expected)}{need} did **not** come out "
                  f"({misses}). Measured: {', '.join(f'{k} {_fmt(values[k], accuracy)}' for k in expected)}.", False)


def claim(row) -> Notice:
    """A reproduction-table row (:class:`fusionkit.reproduce.table.Row`) as a sentence: A − B, its interval, the
    verdict."""
    iv = row.interval
    unit = getattr(row, "unit", "points")
    k, f = (100, ".1f") if unit == "points" else (1, ".3f")
    text = (f"{row.claim}: {row.a} − {row.b} = {k * iv['diff']:+{f}} {unit}, 95% interval "
            f"[{k * iv['lo']:+{f}}, {k * iv['hi']:+{f}}] over {iv['n']} paired test examples: **{row.verdict}**.")
    return Notice(text, row.verdict == "reproduces")
