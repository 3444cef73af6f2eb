"""Fisher-weighted averaging: each parameter averaged with weights from each expert's diagonal Fisher."""
from __future__ import annotations

from ...core.lazy import lazy_import
from ..ops import bcast
from ..registry import option, register
from .averaging import average

torch = lazy_import("torch")

# Which label y the Fisher's log p(y|x) uses (measured by fusionkit.merging.statistics.fisher_stats):
# sampled from the model (the true Fisher), its argmax, or the gold label (the "empirical" Fisher).
VARIANTS = ("sample", "argmax", "gold")


def normalized(stats: list[dict], names: list[str], options: dict) -> list[dict]:
    """With ``normalize``: each expert's Fisher divided by its L2 norm over the merged tensors, so no expert wins
    the shared parameters by having larger gradients overall (a harder task, more labels). MergeLM's and
    FusionBench's ``normalize_fisher_weight``; without it, the Fishers as measured."""
    if not options["normalize"]:
        return stats
    out = []
    for s in stats:
        norm = float(sum((s[n].double() ** 2).sum() for n in names if n in s)) ** 0.5
        out.append({k: v / norm for k, v in s.items()} if norm > 0 else s)
    return out


@register("fisher", "Fisher-weighted average: Σ wᵢFᵢθᵢ / Σ wᵢFᵢ (diagonal Fisher)", stats="fisher",
          reference="https://arxiv.org/abs/2111.09832", prepare=normalized,
          eps=option("added to every Fisher entry (so all-zero Fisher falls back to the average)"),
          normalize=option("divide each expert's Fisher by its L2 norm over the merged tensors (MergeLM, FusionBench)"))
def fisher(tensors, base, w, ctx, *, eps=1e-8, normalize=True):
    """θ = Σ λᵢ(Fᵢ+ε)θᵢ / Σ λᵢ(Fᵢ+ε) with Fᵢ the diagonal Fisher of expert i (Matena & Raffel 2022, "Merging
    Models with Fisher-Weighted Averaging", eq. 3); the per-model scaling coefficients λᵢ are the merge's
    per-expert coefficients (``weights``). ``normalize`` acts on the whole model before this per-tensor step
    (:func:`normalized`); it is the default because it won on dev where it was compared (the smoke multitask zoo,
    five tasks with 2-20 labels: mean dev 0.583 normalised vs 0.554 raw, ``benchmarks/reproduction.md``), and raw
    Fishers let the expert with the largest gradients take the shared parameters. A tensor the Fisher did not
    cover (frozen) is simply averaged."""
    fishers = ctx["stats"]
    if fishers is None:
        return average(tensors, base, w, ctx)
    x = torch.stack(tensors).double()
    f = torch.stack(fishers).double() + eps
    wf = bcast(w, x[0]) * f
    return (wf * x).sum(0) / wf.sum(0)
