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
import math
import zlib
from typing import Sequence

from ..core.errors import MergeError, NonFiniteInput
from ..core.lazy import lazy_import
from . import fused
from .rowblocks import BLOCK_ELEMENTS, Scratch, as_rows, compute_device, map_rows, row_block, row_slices, working_dtype

torch = lazy_import("torch")
np = lazy_import("numpy")

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


def task_vectors(tensors, base, dtype) -> list:
    """τᵢ = θᵢ − θ₀ for every expert's tensor, in ``dtype`` (θ₀ converted once). Whole tensors: for the methods that
    rank or decompose τᵢ as a whole; the entry-wise ones take them a row block at a time (:func:`task_vector_merge`)."""
    b = base.to(dtype)
    return [t.to(dtype) - b for t in tensors]


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
# larger ones by a sample of CUT_SAMPLE entries and a bracket of CUT_SIGMAS standard deviations of its rank. With
# the fused CPU kernels the same line is drawn in entries (CUT_WHOLE_FUSED, 16 CPU blocks): below it |τ| is written
# in one pass into a reused buffer and partitioned (0.3 ns an entry), above it |τ| is never held whole.
CUT_WHOLE, CUT_SAMPLE, CUT_SIGMAS = 16, 1 << 16, 5.0
CUT_WHOLE_FUSED = CUT_WHOLE * BLOCK_ELEMENTS["cpu"]


def trim_cut(x, ref, density: float, device=None):
    """The cut of :func:`trim` for τ = x − ref (``ref`` may be ``None``): the k-th largest |τ|, k = round(density·n)
    (at least 1) - ``kthvalue``'s (n − k + 1)-th smallest, ties counted - taken over the whole tensor but without
    holding |τ| whole; ``None`` for density ≥ 1 (nothing is trimmed).

    A small tensor (up to ``CUT_WHOLE`` row blocks; ``CUT_WHOLE_FUSED`` entries where the fused CPU kernels of
    :mod:`fusionkit.merging.fused` compute |τ|) is selected directly. A larger one by Floyd & Rivest's sampling
    select ("Expected time bounds for selection", CACM 1975): order statistics of a sample of m entries around
    rank k·m/n bracket the cut, [lo, hi]; one pass counts the entries above hi and keeps those within [lo, hi] (a
    few percent), and the cut is the right order statistic among them. The bracket misses with probability below
    1e-6 (5 σ of the sample rank); then |τ| is selected whole. Either way the value is exactly kthvalue's: the
    sample decides only how fast it is found.

    It reads every entry of τ, so it also checks them: a NaN or Inf in x or ref raises :class:`~fusionkit.core.
    errors.NonFiniteInput` (the trim would otherwise drop it unseen), even at density ≥ 1."""
    device = compute_device({"device": device}, x)
    dtype = working_dtype(x, ref)
    n = x.numel()
    k = max(1, int(round(density * n)))
    slices = row_slices(x, device)
    one_pass = ref is not None and fused.available(device, x, ref)  # |τ| in one fused pass on the CPU
    if density >= 1.0:
        _check_finite(torch.stack([_abs_tau(x, ref, rows, device, dtype).max() for rows in slices]))
        return None
    if n <= CUT_WHOLE_FUSED if one_pass else len(slices) <= CUT_WHOLE:
        if one_pass:
            values, zeros, finite = fused.abs_diff(x, ref)
            if not finite:
                _non_finite()
            return _kth_largest(values, k, zeros)
        values = _abs_tau(x, ref, slice(None), device, dtype).reshape(-1)
        cut = _kth_largest(values, k)
        _check_finite(_top(values, k))  # after the select the largest k hold any NaN (numpy sorts it last) or Inf
        return cut
    sample = _sample_abs_tau(x, ref, min(n // 8, CUT_SAMPLE), device, dtype, one_pass)
    m = sample.numel()
    rank = k * m / n
    spread = CUT_SIGMAS * (rank * (1 - k / n)) ** 0.5 + 2
    hi = float(_kth_largest(sample, int(rank - spread))) if rank - spread >= 1 else float("inf")
    lo = float(_kth_largest(sample, int(rank + spread) + 1)) if rank + spread < m else 0.0
    zeros = 0  # entries of |τ| = 0 within the bracket that the fused pass counted instead of keeping
    if one_pass:
        above, between, zeros, finite = fused.count_and_keep(x, ref, lo, hi, int((2 * spread + 1) * n / m))
        if not finite:
            _non_finite()
    else:
        above, between = 0, []
        for rows in slices:
            a = _abs_tau(x, ref, rows, device, dtype).reshape(-1)
            _check_finite(a.max())
            above, kept = _count_and_keep(a, lo, hi, above)
            between.append(kept)
        between = torch.cat(between)
    if above < k <= above + between.numel():
        return _kth_largest(between, k - above, 0 if one_pass else None)
    if above + between.numel() < k <= above + between.numel() + zeros:
        return torch.zeros((), dtype=dtype, device=device)  # the cut falls among the unchanged entries
    return _kth_largest(_abs_tau(x, ref, slice(None), device, dtype).reshape(-1), k)  # the bracket missed


def _sample_abs_tau(x, ref, m: int, device, dtype, strided: bool):
    """|τ| at about m entries: every s-th entry (s coprime to the row length, so every column is visited; reads
    in order, from the cache) where the fused kernels run, else m seeded random positions. Only the speed of
    :func:`trim_cut` depends on the sample, never its value."""
    n = x.numel()
    if strided:
        step, columns = max(1, n // m), as_rows(x).shape[1]
        while math.gcd(step, columns) > 1:
            step += 1
        flat = lambda t: t.reshape(-1)[step // 2::step].to(device, dtype)  # noqa: E731
    else:
        idx = torch.randint(n, (m,), generator=torch.Generator().manual_seed(n))
        flat = lambda t: as_rows(t).reshape(-1)[idx].to(device, dtype)  # noqa: E731
    return (flat(x) - (0 if ref is None else flat(ref))).abs()


def _abs_tau(x, ref, rows, device, dtype):
    block = row_block(x, rows, device, dtype)  # may be a view of x: never changed in place
    return block.abs() if ref is None else (block - row_block(ref, rows, device, dtype)).abs_()


def _count_and_keep(a, lo: float, hi: float, above: int):
    """``above`` + the entries of ``a`` above ``hi``, and those within [lo, hi] (numpy's comparisons on the CPU: a
    few times faster than torch's boolean ones)."""
    if a.device.type != "cpu":
        top = a[a >= lo]  # the top ~density of the entries: the two comparisons below run on these alone
        return above + int((top > hi).sum()), top[top <= hi]
    v = a.numpy()
    return above + int(np.count_nonzero(v > hi)), torch.from_numpy(v[(v >= lo) & (v <= hi)])


def _kth_largest(values, k: int, zeros: int | None = None):
    """The k-th largest of a 1-D tensor of magnitudes (≥ 0, or NaN) that the caller owns - it is reordered in place.
    On the CPU numpy's partition of the values' bits as unsigned integers: non-negative IEEE floats order as their
    bit patterns (NaN after +Inf), and numpy's vectorised integer select runs ~3x its float one here (0.3 vs 0.8 ns
    an entry; torch's ``kthvalue``: 12). Elsewhere ``kthvalue``. The same value either way: an order statistic has
    one value.

    Zeros (``zeros``: their count, if the caller knows it) are set aside when they are many: task vectors can be
    mostly zeros (rows an expert never changed: an embedding's unseen tokens, a frozen layer), and numpy's select
    slows to ~20 ns an entry when a large share of the entries are equal. The k-th largest is then 0 when fewer than
    k entries are not, else the k-th largest of those."""
    if values.device.type != "cpu":
        return values.kthvalue(values.numel() - k + 1).values
    v = values.numpy()
    zeros = v.size - int(np.count_nonzero(v)) if zeros is None else zeros
    if zeros * 8 > v.size:
        if v.size - zeros < k:
            return torch.zeros((), dtype=values.dtype)
        v = v[v != 0]
    bits = v.view(np.uint32 if v.dtype.itemsize == 4 else np.uint64)
    bits.partition(v.size - k)
    return torch.tensor(v[v.size - k], dtype=values.dtype)


def _top(values, k: int):
    """The largest k of ``values`` after :func:`_kth_largest` (on another device: all of them)."""
    return values[values.numel() - k:] if values.device.type == "cpu" else values


def _check_finite(values) -> None:
    if values.numel() and not bool(torch.isfinite(values.max())):
        _non_finite()


def _non_finite():
    raise NonFiniteInput("a task vector (θᵢ − θ₀) has NaN or Inf values; fix: check the models (a diverged "
                         "fine-tune?)")


def trim(tau, density: float, cut=None, out=None):
    """Keep the top ``density`` fraction of entries of one task vector by magnitude, zero the rest.

    The cut is the k-th largest magnitude of the *whole* task vector (:func:`trim_cut`, linear time; a full sort of a
    12M-entry embedding matrix is the slow part of TIES otherwise). Entries tied with the cut are kept: |τ| ≥ cut is
    |τ| > the next float below the cut, which ``hardshrink`` applies in one pass. ``cut``: one computed already -
    then ``tau`` may be a block of the task vector's rows, trimmed exactly as within the whole (a cut per block
    would be another method). ``out``: where to write (``tau`` itself: in place)."""
    if density >= 1.0:
        return tau if out is None else out.copy_(tau)
    cut = trim_cut(tau, None, density) if cut is None else cut
    cut = torch.as_tensor(cut, dtype=tau.dtype)
    below = float(torch.nextafter(cut, torch.zeros_like(cut)))  # 0 at a cut of 0: every entry is kept
    if out is None:
        return torch.nn.functional.hardshrink(tau, below)
    return torch.ops.aten.hardshrink.out(tau, below, out=out)


def task_vector_merge(tensors, base, w, ctx, lam: float, combine=weighted_sum, prune=None, whole: bool = False,
                      dtype=None):
    """θ₀ + λ·combine([prune(τᵢ, i)], w) with τᵢ = θᵢ − θ₀, row block by row block (:func:`~fusionkit.merging.
    rowblocks.map_rows`) in the working precision (or ``dtype``): task arithmetic (no prune, the weighted sum), TIES
    (trim with each τᵢ's whole-tensor cut, then :func:`disjoint_merge`), DARE and DELLA (random drops).
    ``prune(block, i)`` sees expert i's rows in order, so random drops continue one stream; it may change the block
    in place (a scratch buffer of this merge) or return a new one. ``whole=True`` when it needs the whole tensor.
    Each block is written straight into the output, its intermediates in buffers reused from block to block."""
    if prune is None and combine is weighted_sum:  # task arithmetic: θ₀ + λΣwᵢτᵢ with no temporary but a scratch
        if dtype is None and fused.available(compute_device(ctx, base), base, *tensors):  # one pass on the CPU
            return fused.linear(tensors, base, w, lam)

        def lean(dst, b, *xs):
            differences_into(dst, xs, w, b, lam).add_(b)
        return map_rows(lean, [base, *tensors], ctx, whole=whole, dtype=dtype, into=True)
    scratch = Scratch()

    def block(dst, b, *xs):
        taus = scratch("taus", b, len(xs))  # one stack [N, rows, columns]: the election reads it in few passes
        for i, x in enumerate(xs):
            tau = torch.sub(x, b, out=taus[i])
            if prune is not None:
                pruned = prune(tau, i)
                if pruned is not tau:
                    tau.copy_(pruned)
        merged = combine(taus, w, scratch) if combine is disjoint_merge else combine(taus, w)
        torch.add(b, merged, alpha=lam, out=dst)
    return map_rows(block, [base, *tensors], ctx, whole=whole, dtype=dtype, into=True)


def disjoint_merge(taus, w, scratch=None):
    """TIES steps 2-3 on task vectors (a stack [N, ...], or a list): elect s = sgn(Σ wᵢτᵢ) per entry, then the
    weighted mean over the experts that agree with it, Σ wᵢτᵢ[sgn τᵢ = s] / Σ wᵢ[sgn τᵢ = s] (0 where that
    denominator is 0: no expert agrees, or a negative coefficient cancels).

    In the inputs' precision and without a boolean: rᵢ = max(s·τᵢ, 0) is |τᵢ| where τᵢ agrees (s·τᵢ only flips a
    sign: exact) and sgn rᵢ its indicator, so the mean is s·Σwᵢrᵢ / Σwᵢ sgn rᵢ - a few plain passes over the stack
    instead of sign tests, masks and their conversions. ``scratch`` (a :class:`~fusionkit.merging.rowblocks.
    Scratch`): where the intermediates and the result go; the result is valid until its next call."""
    taus = taus if torch.is_tensor(taus) else torch.stack(list(taus))
    coef = w.tolist()
    buf = scratch or (lambda key, like, n=None: torch.empty((n, *like.shape) if n else like.shape,
                                                             dtype=like.dtype, device=like.device))
    sign = _weighted_rows(taus, coef, buf("sign", taus[0])).sign_()
    r = torch.mul(taus, sign, out=buf("r", taus[0], len(taus))).clamp_min_(0)
    num = _weighted_rows(r, coef, buf("num", sign))
    den = _weighted_rows(r.sign_(), coef, buf("den", sign))  # r is spent: its signs are the agreement
    if min(coef) >= 0:  # den is 0 or at least the smallest positive coefficient, and num is 0 wherever den is
        num.div_(den.clamp_min_(min([c for c in coef if c > 0], default=1.0)))
    else:
        num.copy_(torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num)))
    return num.mul_(sign)


def _weighted_rows(stack, coef, out):
    """Σᵢ coefᵢ·stack[i] into ``out``, row by row in order (plain adds when every coefficient is 1)."""
    if coef[0] == 1:
        out.copy_(stack[0])
    else:
        torch.mul(stack[0], coef[0], out=out)
    for c, row in zip(coef[1:], stack[1:]):
        out.add_(row, alpha=c)
    return out


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
