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


@register("fisher", "Fisher-weighted average: Σ wᵢFᵢθᵢ / Σ wᵢFᵢ (diagonal Fisher)", stats="fisher",
          reference="https://arxiv.org/abs/2111.09832",
          eps=option("added to every Fisher entry (so all-zero Fisher falls back to the average)"))
def fisher(tensors, base, w, ctx, *, eps=1e-8):
    """θ = Σ wᵢ(Fᵢ+ε)θᵢ / Σ wᵢ(Fᵢ+ε) with Fᵢ the diagonal Fisher of expert i (Matena & Raffel 2022, "Merging
    Models with Fisher-Weighted Averaging"). A tensor the Fisher did not cover (frozen) is simply averaged."""
    fishers = ctx["stats"]
    if fishers is None:
        return average(tensors, base, w, ctx)
    x = torch.stack(tensors).double()
    f = torch.stack(fishers).double() + eps
    wf = bcast(w, x[0]) * f
    return (wf * x).sum(0) / wf.sum(0)
