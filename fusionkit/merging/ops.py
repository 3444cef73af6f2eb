"""The tensor operations merge methods are built from: coefficients, weighted sums, trimming, sign election,
random drops and spherical interpolation. Each works on one parameter tensor (or a stack of the experts' ones), or
on a block of its rows (:mod:`fusionkit.merging.rowblocks`).

Precision: the entry-wise operations (weighted sums, trimming, sign election, the disjoint mean, drops) compute in
their inputs' working precision - float32, float64 only when an input is float64. They sum differences between
nearby weights (θᵢ − θ₀, θᵢ − θ₁), which float32 subtracts exactly where the two are within a factor 2 (Sterbenz)
and whose few-ulp rounding lies far below one ulp of θ; on SmolLM2-135M a float32 average, task arithmetic or DARE
differs from the float64 one in 0.03-0.15% of the entries, by at most 2.3e-10 (TIES, float32 since 2026-12-02, ran
~2x faster than float64: ``benchmarks/ties_precision.py``). float64 stays where it decides something: the
coefficients, the random draws that decide DARE's and DELLA's masks (a seed's masks do not change), DELLA (its keep
probabilities rank |τ| within a row, and float32 differences tie where float64 ones do not) and SLERP's angle.
(Torch is imported on first use - see :mod:`fusionkit.core.lazy`.)
"""
from __future__ import annotations

import fnmatch
import zlib
from typing import Sequence

from ..core.errors import MergeError
from ..core.lazy import lazy_import
from .rowblocks import as_rows, compute_device, map_rows, row_block, row_slices, working_dtype

torch = lazy_import("torch")

Coefficients = Sequence[float] | dict[str, Sequence[float]] | None


def coefficients_for(name: str, weights: Coefficients, n: int):
    """Per-expert coefficients for one tensor: a list for all tensors, or ``{glob: list}`` per tensor/layer
    (first matching glob wins; ``"*"`` is the fallback)."""
    if weights is None:
        return torch.ones(n, dtype=torch.float64)
    if isinstance(weights, dict):
        for pattern, w in weights.items():
            if fnmatch.fnmatchcase(name, pattern):
                return coefficients_for(name, w, n)
        return torch.ones(n, dtype=torch.float64)
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if w.numel() != n:
        raise MergeError(f"got {w.numel()} coefficients for {n} experts (tensor {name!r}); fix: give one per expert")
    return w


def bcast(w, like):
    """Per-expert coefficients ``[N]`` shaped to multiply a stack ``[N, *like.shape]``."""
    return w.view(-1, *([1] * like.dim()))


def weighted_sum(tensors, w, ref=None):
    """Σ wᵢ(θᵢ − ref) (``ref=None``: Σ wᵢθᵢ), one expert at a time in the working precision (float32, or float64 if
    an input is): memory stays at one extra tensor however many experts there are. With ``ref`` a nearby tensor (θ₀,
    or one of the experts) float32 sums small exact differences, so it loses nothing that survives rounding to θ."""
    dtype = working_dtype(ref, *tensors)
    out = None
    for wi, t in zip(w.tolist(), tensors):
        if t is ref:  # the reference itself adds 0
            continue
        term = t.to(dtype) if ref is None else t.to(dtype) - ref.to(dtype)
        out = term * wi if out is None else out.add_(term, alpha=wi)  # the first term: a new tensor, never an input
    return torch.zeros(tensors[0].shape, dtype=dtype, device=tensors[0].device) if out is None else out


def differences_into(dst, tensors, w, ref, scale: float = 1.0):
    """``dst`` = scale · Σ wᵢ(tᵢ − ref) in place, over the tᵢ that are not ``ref`` itself - :func:`weighted_sum`'s
    sum (the same exact differences, the same order) with no temporary but one scratch block: a linear merge is a
    handful of passes over each block instead of a dozen allocations and copies. All in ``dst``'s dtype."""
    scratch, first = None, True
    for wi, t in zip(w.tolist(), tensors):
        if t is ref:
            continue
        if first:
            torch.sub(t, ref, out=dst)
            dst.mul_(wi * scale)
            first = False
            continue
        scratch = torch.empty_like(dst) if scratch is None else scratch
        torch.sub(t, ref, out=scratch)
        dst.add_(scratch, alpha=wi * scale)
    return dst.zero_() if first else dst


# Tensors of up to CUT_WHOLE row blocks are selected whole (|τ| of 16 blocks is small next to the largest tensor);
# larger ones by a sample of CUT_SAMPLE entries and a bracket of CUT_SIGMAS standard deviations of its rank.
CUT_WHOLE, CUT_SAMPLE, CUT_SIGMAS = 16, 1 << 16, 5.0


def trim_cut(x, ref, density: float, device=None):
    """The cut of :func:`trim` for τ = x − ref (``ref`` may be ``None``): the k-th largest |τ|, k = round(density·n)
    (at least 1) - ``kthvalue``'s (n − k + 1)-th smallest, ties counted - taken over the whole tensor but without
    holding |τ| whole; ``None`` for density ≥ 1 (nothing is trimmed).

    A tensor of up to ``CUT_WHOLE`` row blocks is selected directly. A larger one (an embedding matrix) by Floyd &
    Rivest's sampling select ("Expected time bounds for selection", CACM 1975): order statistics of a fixed sample
    around rank k·m/n bracket the cut, [lo, hi]; one pass over row blocks counts the entries above hi and keeps
    those within [lo, hi] (a few percent), and the cut is the right order statistic among them. The bracket misses
    with probability below 1e-6 (5 σ of the sample rank); then |τ| is selected whole. Either way the value is
    exactly kthvalue's."""
    if density >= 1.0:
        return None
    device = compute_device({"device": device}, x)
    dtype = working_dtype(x, ref)
    n = x.numel()
    k = max(1, int(round(density * n)))
    slices = row_slices(x, device)
    if len(slices) <= CUT_WHOLE:
        return _kth_largest(_abs_tau(x, ref, slice(None), device, dtype).reshape(-1), k)
    m = min(n // 8, CUT_SAMPLE)
    idx = torch.randint(n, (m,), generator=torch.Generator().manual_seed(n))
    at = lambda t: as_rows(t).reshape(-1)[idx].to(device, dtype)  # noqa: E731
    sample = (at(x) - (0 if ref is None else at(ref))).abs()
    rank = k * m / n
    spread = CUT_SIGMAS * (rank * (1 - k / n)) ** 0.5 + 2
    hi = float(_kth_largest(sample, int(rank - spread))) if rank - spread >= 1 else float("inf")
    lo = float(_kth_largest(sample, int(rank + spread) + 1)) if rank + spread < m else 0.0
    above, between = 0, []
    for rows in slices:
        a = _abs_tau(x, ref, rows, device, dtype)
        a = a[a >= lo]  # the top ~density of the entries: the two comparisons below run on these alone
        above += int((a > hi).sum())
        between.append(a[a <= hi])
    between = torch.cat(between)
    if above < k <= above + between.numel():
        return _kth_largest(between, k - above)
    return _kth_largest(_abs_tau(x, ref, slice(None), device, dtype).reshape(-1), k)  # the bracket missed


def _abs_tau(x, ref, rows, device, dtype):
    block = row_block(x, rows, device, dtype)  # may be a view of x: never changed in place
    return block.abs() if ref is None else (block - row_block(ref, rows, device, dtype)).abs_()


def _kth_largest(values, k: int):
    return values.kthvalue(values.numel() - k + 1).values


def trim(tau, density: float, cut=None):
    """Keep the top ``density`` fraction of entries of one task vector by magnitude, zero the rest.

    The cut is the k-th largest magnitude of the *whole* task vector (:func:`trim_cut`, linear time; a full sort of a
    12M-entry embedding matrix is the slow part of TIES otherwise). Entries tied with the cut are kept. ``cut``: one
    computed already - then ``tau`` may be a block of the task vector's rows, trimmed exactly as within the whole
    (a cut per block would be another method)."""
    if density >= 1.0:
        return tau
    cut = trim_cut(tau, None, density) if cut is None else cut
    return tau * (tau.abs() >= cut)


def task_vector_merge(tensors, base, w, ctx, lam: float, combine=weighted_sum, prune=None, whole: bool = False,
                      dtype=None):
    """θ₀ + λ·combine([prune(τᵢ, i)], w) with τᵢ = θᵢ − θ₀, row block by row block (:func:`~fusionkit.merging.
    rowblocks.map_rows`) in the working precision (or ``dtype``): task arithmetic (no prune, the weighted sum), TIES
    (trim with each τᵢ's whole-tensor cut, then :func:`disjoint_merge`), DARE and DELLA (random drops).
    ``prune(block, i)`` sees expert i's rows in order, so random drops continue one stream; ``whole=True`` when it
    needs the whole tensor."""
    if prune is None and combine is weighted_sum:  # task arithmetic: θ₀ + λΣwᵢτᵢ written straight into the output
        def lean(dst, b, *xs):
            differences_into(dst, xs, w, b, lam).add_(b)
        return map_rows(lean, [base, *tensors], ctx, whole=whole, dtype=dtype, into=True)

    def block(b, *xs):
        taus = [x - b if prune is None else prune(x - b, i) for i, x in enumerate(xs)]
        return b + lam * combine(taus, w)
    return map_rows(block, [base, *tensors], ctx, whole=whole, dtype=dtype)


def disjoint_merge(taus, w):
    """TIES steps 2-3 on stacked task vectors [N, ...]: elect s = sgn(Σ wᵢτᵢ), mean over agreeing entries.

    Works in the stack's own precision; both sums over the experts are one matrix-vector product each (w @ τ), so
    the stack is read a few times rather than materialised once per step. ``taus`` may be a list of tensors."""
    taus = torch.stack(list(taus)) if isinstance(taus, (list, tuple)) else taus
    flat = taus.reshape(len(taus), -1)
    w = w.to(flat.device, flat.dtype)
    sign = torch.sign(w @ flat)
    # τᵢ with the elected sign; where nothing is elected (sign 0) only τᵢ = 0 "agrees", adding 0 to the numerator,
    # so that entry's mean is 0 as if none agreed
    agree = (torch.sign(flat) == sign).to(flat.dtype)
    num, den = w @ (flat * agree), w @ agree
    # a negative coefficient can make the denominator negative: divide wherever it is not 0 (a clamp to a tiny
    # positive number would turn those entries into huge ones)
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)),
                       torch.zeros_like(num)).view(taus.shape[1:])


def dare(tau, p: float, rescale: str, generator):
    """Drop entries with probability ``p``; rescale survivors by 1/(1−p) ("inverse") or to keep the L1 norm ("l1").

    The uniform draws are float64 on the CPU whatever ``tau``'s precision and device, so a seed's mask is the same
    everywhere; they continue the generator's stream, so row blocks drawn in order make the whole tensor's mask."""
    if p == 0:
        return tau
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= p
    dropped = tau * keep.to(tau.device)
    if rescale == "inverse":
        return dropped / (1 - p)
    norm = dropped.abs().sum()
    return dropped * (tau.abs().sum() / norm) if norm > 0 else dropped


def tensor_generator(seed: int, name: str, i: int):
    """A generator seeded by (seed, tensor name, expert): the same mask whatever order tensors are visited in."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 101 + i) % 2**63)


def slerp(a, b, t: float, eps: float = 5e-4):
    """Spherical interpolation of two tensors (flattened); linear when they are within ``eps`` of colinear."""
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    return slerp_mix(a64, b64, slerp_cosine(a64, b64), t, eps).view(a.shape).to(a.dtype)


def slerp_cosine(a64, b64):
    """cos Ω between two flattened float64 tensors (1 when either is zero). It does not depend on t, so a path
    of many t computes it once per tensor (:func:`fusionkit.merging.landscape.path`)."""
    na, nb = a64.norm(), b64.norm()
    return torch.clamp((a64 / na) @ (b64 / nb), -1.0, 1.0) if na > 0 and nb > 0 else torch.tensor(1.0)


def slerp_mix(a64, b64, cos, t: float, eps: float = 5e-4):
    """sin((1 − t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b in float64, Ω = arccos(cos); the line when |cos| is within
    ``eps`` of 1 (there sin Ω → 0 and the arc is the chord anyway)."""
    if 1 - cos.abs() < eps:
        return (1 - t) * a64 + t * b64
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a64 + (torch.sin(t * omega) / so) * b64
