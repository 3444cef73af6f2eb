"""Fused CPU kernels: a merge that acts entry by entry, computed in one pass over its inputs.

Written as torch operations, TIES's trim, sign election and disjoint mean are about twenty passes over every row
block (subtract, shrink, sum, sign, multiply, clamp, sum, sign, sum, divide, ...), each a kernel launch and a trip
through the cache; on SmolLM2-135M that was most of a 3 s merge against a 0.3 s copy bound. Compiled by numba
(LLVM) the same arithmetic is one loop that reads each input entry once and writes the output entry once - memory
speed. The kernels compute exactly what the row-block operations of :mod:`fusionkit.merging.ops` define (the tests
compare them); those remain the definition and serve every other device.

numba is imported and each kernel compiled on first use (cached on disk after that, so a later process loads it in
a fraction of a second); :func:`available` says whether the CPU path can be taken.
"""
from __future__ import annotations

import functools
import threading

from ..core.lazy import lazy_import

torch = lazy_import("torch")
np = lazy_import("numpy")


def available(device, *tensors) -> bool:
    """Whether the fused kernels can compute on these tensors on ``device``: numba importable, the CPU, every input
    float32 or every input float64 (half-precision inputs would need whole float32 copies: the row blocks convert
    them a block at a time)."""
    if _numba() is None or torch.device(device).type != "cpu":
        return False
    dtypes = {t.dtype for t in tensors if t is not None}
    return len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64} and all(
        t is None or t.device.type == "cpu" for t in tensors)


def warm() -> float:
    """Import numba and load a kernel (from numba's on-disk cache after the first process): the once-per-process
    start-up of the JIT (~0.5 s on this project's CPU machine, whatever the model's size), as importing torch is.
    Returns the seconds it took; 0 where numba is missing."""
    import time

    start = time.perf_counter()
    if _numba() is None:
        return 0.0
    x = torch.zeros(4)
    abs_diff(x, x)
    return time.perf_counter() - start


@functools.cache
def _numba():
    try:
        import numba
    except ImportError:  # an install without numba: the row-block operations do the work
        return None
    return numba


def ties(tensors, base, w, cuts, lam: float):
    """θ₀ + λ·τ_M for TIES (Yadav et al. 2023) in one pass: per entry, τᵢ = θᵢ − θ₀ is kept where |τᵢ| ≥ cutᵢ
    (``cuts[i]`` None: kept whole), s = sgn(Σ wᵢτ̂ᵢ) is elected and τ_M = Σ wᵢτ̂ᵢ[sgn τ̂ᵢ = s] / Σ wᵢ[sgn τ̂ᵢ = s]
    (0 where that denominator is 0). Arithmetic in the inputs' dtype, as :func:`fusionkit.merging.ops.
    disjoint_merge` on a row block; the result is a new tensor of ``base``'s shape and dtype."""
    arrays = tuple(_flat(t) for t in tensors)
    kind = arrays[0].dtype
    out = torch.empty(base.shape, dtype=base.dtype)
    _ties_kernel()(out.view(-1).numpy(), _flat(base), arrays,
                   np.array([0.0 if c is None else float(c) for c in cuts], dtype=kind),
                   np.asarray(w.tolist(), dtype=kind), kind.type(lam))
    return out


def linear(tensors, ref, w, scale: float, ref_weight: float = 1.0):
    """ref_weight·ref + scale·Σ wᵢ(xᵢ − ref) over the tensors that are not ``ref`` itself, in one pass: the
    average (ref = θ₁, scale = 1/Σwᵢ) and task arithmetic (ref = θ₀, scale = λ) with the differences, their order
    and precision of :func:`fusionkit.merging.ops.differences_into`. A new tensor of ``ref``'s shape and dtype."""
    pairs = [(t, wi) for t, wi in zip(tensors, w.tolist()) if t is not ref]
    out = torch.empty(ref.shape, dtype=ref.dtype)
    r = _flat(ref)
    if not pairs:  # every tensor is the reference: the differences add nothing
        out.view(-1).numpy()[:] = r * r.dtype.type(ref_weight)
        return out
    kind = r.dtype
    _linear_kernel()(out.view(-1).numpy(), r, tuple(_flat(t) for t, _ in pairs),
                     np.array([wi * scale for _, wi in pairs], dtype=kind), kind.type(ref_weight))
    return out


def abs_diff(x, ref):
    """|x − ref| flattened, in one pass, with how many of its entries are 0 and whether every entry is finite (a
    NaN or Inf in either gives a NaN there). The result lives in a buffer this thread reuses (as large as the largest tensor asked for, at most
    ``ops.CUT_WHOLE_FUSED`` entries): valid until its next call - a TIES merge selects its cut from it, in place,
    before asking for the next expert's."""
    a, b = _flat(x), _flat(ref)
    out = _buffer(a.size, a.dtype)
    zeros, finite = _abs_diff_kernel()(out, a, b)
    return torch.from_numpy(out), int(zeros), bool(finite)


def count_and_keep(x, ref, lo: float, hi: float, expected: int):
    """For d = |x − ref|: how many entries exceed ``hi``, the nonzero entries within [lo, hi] (a new 1-D tensor),
    how many zeros lie within (counted, not kept: an expert's unchanged entries can be most of a tensor) and
    whether every entry is finite - a sampling select's bracket, with no |x − ref| held whole. One pass into room
    for twice the ``expected`` number within (a large tensor is read from memory: each pass costs); a second pass
    when more fall within."""
    a, b = _flat(x), _flat(ref)
    above, between, zeros, finite = _bracket_kernel()(a, b, a.dtype.type(lo), a.dtype.type(hi),
                                                      2 * expected + 4096)
    return int(above), torch.from_numpy(between), int(zeros), bool(finite)


_local = threading.local()


def _buffer(n: int, dtype):
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = _local.buffer = np.empty(n, dtype=dtype)
    return buf[:n]


def _flat(t):
    """A read-only 1-D numpy view (every input typed alike, so the experts form one tuple type for numba)."""
    view = t.detach().reshape(-1).numpy().view()
    view.flags.writeable = False
    return view


# Entries per inner block: the experts' trimmed values of one block (N x 8 KB in float32) stay in the L1/L2 cache
# between the election and the mean, and every inner loop is a plain vectorisable one.
BLOCK = 2048


@functools.cache
def _ties_kernel():
    numba = _numba()

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def kernel(out, base, xs, cuts, w, lam):
        n_experts, n = len(xs), base.size
        zero, one = base.dtype.type(0), base.dtype.type(1)
        kept = np.empty((n_experts, BLOCK), dtype=base.dtype)
        sign = np.empty(BLOCK, dtype=base.dtype)
        num = np.empty(BLOCK, dtype=base.dtype)
        den = np.empty(BLOCK, dtype=base.dtype)
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            b = base[start:start + m]
            sign[:m] = zero
            for i in range(n_experts):  # trim τᵢ = θᵢ − θ₀ at its cut (ties with the cut kept); Σ wᵢτ̂ᵢ
                x, t, cut, wi = xs[i][start:start + m], kept[i], cuts[i], w[i]
                for j in range(m):
                    d = x[j] - b[j]
                    d = d if abs(d) >= cut else zero
                    t[j] = d
                    sign[j] += wi * d
            for j in range(m):  # elect s = sgn(Σ wᵢτ̂ᵢ)
                v = sign[j]
                sign[j] = one if v > 0 else (-one if v < 0 else zero)
            num[:m] = zero
            den[:m] = zero
            for i in range(n_experts):  # the experts agreeing with s (s·τ̂ᵢ > 0: a sign flip, exact)
                t, wi = kept[i], w[i]
                for j in range(m):
                    agree = t[j] * sign[j] > 0
                    num[j] += wi * t[j] if agree else zero
                    den[j] += wi if agree else zero
            o = out[start:start + m]
            for j in range(m):
                o[j] = b[j] + lam * (num[j] / den[j] if den[j] != 0 else zero)
        return out

    return kernel


@functools.cache
def _abs_diff_kernel():
    numba = _numba()

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def kernel(out, x, b):
        largest = np.finfo(x.dtype).max
        zero = x.dtype.type(0)
        zeros, bad = 0, 0  # integer sums and ORs, not float tests: they keep the loop vectorisable
        for j in range(x.size):
            d = abs(x[j] - b[j])
            out[j] = d
            zeros += d == zero
            bad |= not (d <= largest)  # NaN and Inf fail d <= the largest finite value
        return zeros, bad == 0

    return kernel


@functools.cache
def _bracket_kernel():
    numba = _numba()

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def kernel(x, b, lo, hi, room):
        largest = np.finfo(x.dtype).max
        zero = x.dtype.type(0)
        above, inside, zeros, bad = 0, 0, 0, 0
        kept = np.empty(room + 1, dtype=x.dtype)
        for j in range(x.size):  # write every d, advance past the kept ones: no branch to mispredict (5x faster)
            d = abs(x[j] - b[j])
            above += d > hi
            kept[min(inside, room)] = d
            inside += (d >= lo) & (d <= hi) & (d > zero)
            zeros += (d == zero) & (lo <= zero)
            bad |= not (d <= largest)
        if inside <= room:
            return above, kept[:inside], zeros, bad == 0
        kept = np.empty(inside + 1, dtype=x.dtype)  # more fell within than there was room for: keep them all
        k = 0
        for j in range(x.size):
            d = abs(x[j] - b[j])
            kept[k] = d
            k += (d >= lo) & (d <= hi) & (d > zero)
        return above, kept[:k], zeros, bad == 0

    return kernel


@functools.cache
def _linear_kernel():
    numba = _numba()

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def kernel(out, ref, xs, coef, ref_weight):
        n = ref.size
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            r, o = ref[start:start + m], out[start:start + m]
            x, c = xs[0][start:start + m], coef[0]
            for j in range(m):
                o[j] = (x[j] - r[j]) * c
            for i in range(1, len(xs)):
                x, c = xs[i][start:start + m], coef[i]
                for j in range(m):
                    o[j] += (x[j] - r[j]) * c
            if ref_weight == 1:
                for j in range(m):
                    o[j] += r[j]
            else:
                for j in range(m):
                    o[j] += r[j] * ref_weight
        return out

    return kernel
