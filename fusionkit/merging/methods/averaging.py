"""Linear combinations of the experts: the weighted average and task arithmetic."""
from __future__ import annotations

from ..ops import weighted_sum
from ..registry import option, register


@register("average", "weighted average / uniform soup: Σ wᵢθᵢ / Σ wᵢ",
          reference="https://arxiv.org/abs/2203.05482",
          normalize=option("divide by Σ wᵢ (False: plain weighted sum)"))
def average(tensors, base, w, ctx, *, normalize=True):
    """θ = Σ wᵢθᵢ / Σ wᵢ; with wᵢ = 1 the uniform soup (Wortsman et al. 2022, "Model soups")."""
    out = weighted_sum(tensors, w)
    return out / w.sum() if normalize else out


@register("task_arithmetic", "θ₀ + λ Σ wᵢτᵢ", needs_base=True, reference="https://arxiv.org/abs/2212.04089",
          lam=option("scaling λ of the summed task vectors"))
def task_arithmetic(tensors, base, w, ctx, *, lam=0.4):
    """θ = θ₀ + λ Σ wᵢ(θᵢ − θ₀) (Ilharco et al. 2023, "Editing Models with Task Arithmetic")."""
    b = base.double()
    return b + lam * (weighted_sum(tensors, w) - w.sum() * b)
