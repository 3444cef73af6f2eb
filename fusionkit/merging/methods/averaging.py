"""Linear combinations of the experts: the weighted average and task arithmetic."""
from __future__ import annotations

from .. import fused
from ..ops import differences_into, task_vector_merge
from ..registry import option, register
from ..rowblocks import compute_device, map_rows


@register("average", "weighted average / uniform soup: Σ wᵢθᵢ / Σ wᵢ",
          reference="https://arxiv.org/abs/2203.05482", propagates=True,
          normalize=option("divide by Σ wᵢ (False: plain weighted sum)"))
def average(tensors, base, w, ctx, *, normalize=True):
    """θ = Σ wᵢθᵢ / Σ wᵢ; with wᵢ = 1 the uniform soup (Wortsman et al. 2022, "Model soups").

    Computed as θ₁ + Σ wᵢ(θᵢ − θ₁) / Σ wᵢ in row blocks, in float32 (:mod:`fusionkit.merging.ops`): the sum is of
    the experts' small differences from the first, so float32 rounds where float64 would."""
    total = float(w.sum())
    if fused.available(compute_device(ctx, tensors[0]), *tensors):  # one pass on the CPU: the same arithmetic
        return fused.linear(tensors, tensors[0], w, 1.0 / total if normalize else 1.0,
                            1.0 if normalize else total)

    def block(dst, *xs):  # written into the output's rows: a few passes per block, no temporaries
        if normalize:
            differences_into(dst, xs, w, xs[0], 1.0 / total).add_(xs[0])
        else:
            differences_into(dst, xs, w, xs[0]).add_(xs[0], alpha=total)
    return map_rows(block, list(tensors), ctx, into=True)


@register("task_arithmetic", "θ₀ + λ Σ wᵢτᵢ", needs_base=True, reference="https://arxiv.org/abs/2212.04089",
          propagates=True,
          lam=option("scaling λ of the summed task vectors"))
def task_arithmetic(tensors, base, w, ctx, *, lam=0.4):
    """θ = θ₀ + λ Σ wᵢ(θᵢ − θ₀) (Ilharco et al. 2023, "Editing Models with Task Arithmetic"); row blocks, float32."""
    return task_vector_merge(tensors, base, w, ctx, lam)
