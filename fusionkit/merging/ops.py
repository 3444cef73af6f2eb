"""The tensor operations merge methods are built from: coefficients, weighted sums, trimming, sign election,
random drops and spherical interpolation. Each works on one parameter tensor (or a stack of the experts' ones).

Arithmetic is float64 where it sums or divides many experts' tensors (weighted sums, normalised weights,
SLERP's angle), so a notebook can compare merges that differ in the third decimal of a score. TIES runs in float32
(:func:`fusionkit.merging.methods.sparsify.ties`): trimming and sign election select entries and the disjoint mean
averages at most N of them, so float32 adds a few ulps of τ - below the rounding of θ₀ + τ to the experts' float32 -
and it is about 2x faster (``benchmarks/ties_precision.py``: 7.95 → 4.15 s for five MiniLM bodies). (Torch is imported on first use - see :mod:`fusionkit.core.lazy`.)
"""
from __future__ import annotations

import fnmatch
import zlib
from typing import Sequence

from ..core.errors import MergeError
from ..core.lazy import lazy_import

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


def weighted_sum(tensors, w):
    """Σ wᵢθᵢ, one expert at a time in float64: memory stays at one extra tensor however many experts there are."""
    out = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for wi, t in zip(w.tolist(), tensors):
        out.add_(t.double(), alpha=wi)
    return out


def trim(tau, density: float):
    """Keep the top ``density`` fraction of entries of one task vector by magnitude, zero the rest.

    The cut is the k-th largest magnitude (``kthvalue``, linear time; a full sort of a 12M-entry embedding
    matrix is the slow part of TIES otherwise). Entries tied with the cut are kept.
    """
    if density >= 1.0:
        return tau
    flat = tau.reshape(-1).abs()
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # kthvalue has no half-precision kernel on CPU
    k = max(1, int(round(density * flat.numel())))
    # the cut in the task vector's own precision: a float64 τ cut at its value rounded to float32 lost the k-th entry
    cut = flat.kthvalue(flat.numel() - k + 1).values
    return tau * (tau.abs() >= cut)


def disjoint_merge(taus, w):
    """TIES steps 2-3 on stacked task vectors [N, ...]: elect s = sgn(Σ wᵢτᵢ), mean over agreeing entries.

    Works in the stack's own precision; both sums over the experts are one matrix-vector product each (w @ τ), so
    the stack is read a few times rather than materialised once per step."""
    flat = taus.reshape(len(taus), -1)
    w = w.to(flat.dtype)
    sign = torch.sign(w @ flat)
    agree = ((torch.sign(flat) == sign) & (sign != 0)).to(flat.dtype)  # τᵢ ≠ 0 with the elected sign
    num, den = w @ (flat * agree), w @ agree
    return torch.where(den != 0, num / den.clamp_min(1e-30), torch.zeros_like(num)).view(taus.shape[1:])


def dare(tau, p: float, rescale: str, generator):
    """Drop entries with probability ``p``; rescale survivors by 1/(1−p) ("inverse") or to keep the L1 norm ("l1")."""
    if p == 0:
        return tau
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= p
    dropped = tau * keep
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
    na, nb = a64.norm(), b64.norm()
    cos = torch.clamp((a64 / na) @ (b64 / nb), -1.0, 1.0) if na > 0 and nb > 0 else torch.tensor(1.0)
    if 1 - cos.abs() < eps:
        out = (1 - t) * a64 + t * b64
    else:
        omega = torch.arccos(cos)
        so = torch.sin(omega)
        out = (torch.sin((1 - t) * omega) / so) * a64 + (torch.sin(t * omega) / so) * b64
    return out.view(a.shape).to(a.dtype)
