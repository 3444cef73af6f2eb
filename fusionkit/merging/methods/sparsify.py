"""Sparsified task vectors: TIES (keep the largest entries, elect a sign, average the agreeing ones) and DARE
(drop entries at random, rescale the survivors)."""
from __future__ import annotations

from .. import fused
from ..ops import dare as dare_drop, disjoint_merge, task_vector_merge, tensor_generator, trim, trim_cut, weighted_sum
from ..registry import option, register
from ..rowblocks import compute_device


@register("ties", "TIES: trim to top-density, elect sign, disjoint mean; θ₀ + λτ_M", needs_base=True,
          reference="https://arxiv.org/abs/2306.01708", propagates=True,
          density=option("fraction of each task vector kept", lambda v: 0 < v <= 1, "in (0, 1]"),
          lam=option("scaling λ of the merged task vector"))
def ties(tensors, base, w, ctx, *, density=0.2, lam=1.0):
    """TIES-merging (Yadav et al. 2023): (1) trim each τᵢ to its top-``density`` entries by magnitude, (2) elect a
    sign per entry s = sgn(Σ wᵢτ̂ᵢ), (3) average only the entries that agree with s (disjoint mean), θ = θ₀ + λτ_M.

    In the inputs' precision (float32 is exact enough: :mod:`fusionkit.merging.ops`). Each τᵢ's cut is its k-th
    largest magnitude over the *whole* tensor (:func:`~fusionkit.merging.ops.trim_cut`); applying it, the election
    and the mean then run in one fused pass on the CPU (:func:`fusionkit.merging.fused.ties`), elsewhere row block
    by row block - either way the merge peaks near the linear merge's memory."""
    cuts = [trim_cut(t, base, density, ctx.get("device")) for t in tensors]
    if fused.available(compute_device(ctx, base), base, *tensors):  # one pass on the CPU: the same arithmetic
        return fused.ties(tensors, base, w, cuts, lam)
    return task_vector_merge(tensors, base, w, ctx, lam, disjoint_merge,
                             lambda tau, i: trim(tau, density, cuts[i], out=tau))


@register("dare", "DARE: random drop p + rescale, then task arithmetic or TIES", needs_base=True,
          reference="https://arxiv.org/abs/2311.03099",
          p=option("drop probability", lambda v: 0 <= v < 1, "in [0, 1)"),
          rescale=option("'inverse' = ×1/(1−p) (paper, unbiased; also mergekit's dare_*); "
                         "'l1' = keep each τᵢ's L1 norm (mergekit's rescale for magnitude pruning)",
                         lambda v: v in ("inverse", "l1"), "'inverse' or 'l1'"),
          then=option("merge of the sparsified vectors: 'task_arithmetic' or 'ties'",
                      lambda v: v in ("task_arithmetic", "ties"), "'task_arithmetic' or 'ties'"),
          lam=option("scaling λ"), seed=option("seed of the drop masks"))
def dare(tensors, base, w, ctx, *, p=0.5, rescale="inverse", then="task_arithmetic", lam=1.0, seed=0):
    """DARE (Yu et al. 2024, "Language Models are Super Mario"): drop each entry of τᵢ with probability p and rescale
    the survivors - by 1/(1−p), unbiased in expectation (the paper; mergekit's dare_linear / dare_ties), or to keep
    each τᵢ's L1 norm - then merge with task arithmetic or TIES's sign election. Masks are seeded per tensor and
    expert, drawn in float64 (:func:`~fusionkit.merging.ops.dare`); the rest is float32, in row blocks (the L1
    rescale needs each whole τᵢ: one block)."""
    gens = [tensor_generator(seed, ctx["name"], i) for i in range(len(tensors))]
    return task_vector_merge(tensors, base, w, ctx, lam, disjoint_merge if then == "ties" else weighted_sum,
                             lambda tau, i: dare_drop(tau, p, rescale, gens[i]), whole=rescale == "l1" and p > 0)
