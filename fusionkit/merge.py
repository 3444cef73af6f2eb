"""Every weight-space merge behind one registry and one signature.

    merged = merge("ties", experts, base=base, density=0.2, lam=1.0)

``experts`` are state dicts (the bodies, or whole models when the label spaces match); ``base`` is θ₀ where a
method needs one; ``stats`` are per-expert statistics from a separate measure step (:mod:`fusionkit.measure`:
diagonal Fisher, input Gram matrices). Every method is defined *per tensor* - given the i-th expert's tensor
θᵢ for one parameter name, return the merged tensor - so the driver can stream tensors from safetensors one
name at a time and peak memory stays near one model.

Methods (θ₀ base, θᵢ experts, τᵢ = θᵢ − θ₀, wᵢ coefficients):

* ``average``          θ = Σ wᵢθᵢ / Σ wᵢ  (uniform soup: wᵢ = 1; Wortsman et al. 2022)
* ``task_arithmetic``  θ = θ₀ + λ Σ wᵢτᵢ  (Ilharco et al. 2023)
* ``ties``             trim each τᵢ to its top-``density`` entries by magnitude, elect a sign per entry
                       s = sgn(Σ wᵢτ̂ᵢ), average the entries that agree with s (disjoint mean), θ = θ₀ + λτ_M
                       (Yadav et al. 2023)
* ``dare``             drop each entry of τᵢ with probability p and rescale the survivors - by 1/(1−p) (the paper,
                       Yu et al. 2024: unbiased in expectation; mergekit's dare_linear / dare_ties do the same) or to
                       keep each τᵢ's L1 norm (the rule mergekit applies after magnitude pruning) - then merge with
                       task arithmetic or TIES
* ``slerp``            two models, per tensor: along the great circle, Ω = arccos⟨θ̂_A, θ̂_B⟩,
                       θ = sin((1−t)Ω)/sin Ω · θ_A + sin(tΩ)/sin Ω · θ_B; linear when nearly colinear (Shoemake 1985)
* ``fisher``           θ = Σ wᵢ(Fᵢ+ε)θᵢ / Σ wᵢ(Fᵢ+ε), diagonal Fisher Fᵢ (Matena & Raffel 2022)
* ``regmean``          per linear layer y = Wx: Wᵀ = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢWᵢᵀ, Gᵢ = XᵢᵀXᵢ, G̃ᵢ = αGᵢ + (1−α)diag(Gᵢ);
                       every other tensor by simple average (Jin et al. 2023, "Dataless Knowledge Fusion")

What is merged: the tensors passed in. Callers (``merge_zoo``) pass bodies for experts of different tasks,
which keep their own heads, and whole models (heads included) for experts that share a label space.
"""
from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .weights import ParamFilter, StateDict, check_compatible, check_finite


class MergeError(ValueError):
    """A merge cannot run with the given inputs or options."""


@dataclass(frozen=True)
class Option:
    default: object
    help: str
    check: Callable[[object], bool] | None = None
    rule: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    summary: str
    needs_base: bool = False
    stats: str | None = None  # "fisher" or "gram": the measure step the method needs
    n_experts: int | None = None  # exactly this many experts (SLERP: 2)
    options: dict = field(default_factory=dict)


METHODS: dict[str, Method] = {}


def register(name: str, summary: str, needs_base: bool = False, stats: str | None = None,
             n_experts: int | None = None, **options: Option):
    def wrap(fn):
        METHODS[name] = Method(name, fn, summary, needs_base, stats, n_experts, options)
        return fn
    return wrap


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; fix: use one of {', '.join(METHODS)}")
    return METHODS[name]


# ------------------------------------------------------------------------------------------ coefficients
Coefficients = Sequence[float] | dict[str, Sequence[float]] | None


def coefficients_for(name: str, weights: Coefficients, n: int) -> torch.Tensor:
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


def _bcast(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return w.view(-1, *([1] * like.dim()))


# ------------------------------------------------------------------------------------------ methods
def _weighted_sum(tensors, w) -> torch.Tensor:
    # One expert at a time in float64: memory stays at one extra tensor however many experts there are.
    out = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for wi, t in zip(w.tolist(), tensors):
        out.add_(t.double(), alpha=wi)
    return out


@register("average", "weighted average / uniform soup: Σ wᵢθᵢ / Σ wᵢ",
          normalize=Option(True, "divide by Σ wᵢ (False: plain weighted sum)"))
def _average(tensors, base, w, ctx, normalize=True):
    out = _weighted_sum(tensors, w)
    return out / w.sum() if normalize else out


@register("task_arithmetic", "θ₀ + λ Σ wᵢτᵢ", needs_base=True,
          lam=Option(0.4, "scaling λ of the summed task vectors"))
def _task_arithmetic(tensors, base, w, ctx, lam=0.4):
    b = base.double()
    return b + lam * (_weighted_sum(tensors, w) - w.sum() * b)  # θ₀ + λ Σ wᵢ(θᵢ − θ₀)


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top ``density`` fraction of entries of one task vector by magnitude, zero the rest.

    The cut is the k-th largest magnitude (``kthvalue``, linear time; a full sort of a 12M-entry embedding
    matrix is the slow part of TIES otherwise). Entries tied with the cut are kept.
    """
    if density >= 1.0:
        return tau
    flat = tau.reshape(-1).abs()
    k = max(1, int(round(density * flat.numel())))
    cut = flat.float().kthvalue(flat.numel() - k + 1).values
    return tau * (tau.abs() >= cut)


def disjoint_merge(taus: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """TIES steps 2-3 on stacked task vectors [N, ...]: elect s = sgn(Σ wᵢτᵢ), mean over agreeing entries."""
    weighted = _bcast(w, taus[0]) * taus
    sign = torch.sign(weighted.sum(0))
    agree = (torch.sign(taus) == sign) & (taus != 0)
    num = (weighted * agree).sum(0)
    den = (_bcast(w, taus[0]) * agree).sum(0)
    return torch.where(den != 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


@register("ties", "TIES: trim to top-density, elect sign, disjoint mean; θ₀ + λτ_M", needs_base=True,
          density=Option(0.2, "fraction of each task vector kept", lambda v: 0 < v <= 1, "in (0, 1]"),
          lam=Option(1.0, "scaling λ of the merged task vector"))
def _ties(tensors, base, w, ctx, density=0.2, lam=1.0):
    taus = torch.stack([trim(t.double() - base.double(), density) for t in tensors])
    return base.double() + lam * disjoint_merge(taus, w)


def dare(tau: torch.Tensor, p: float, rescale: str, generator: torch.Generator) -> torch.Tensor:
    """Drop entries with probability ``p``; rescale survivors by 1/(1−p) ("inverse") or to keep the L1 norm ("l1")."""
    if p == 0:
        return tau
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64) >= p
    dropped = tau * keep
    if rescale == "inverse":
        return dropped / (1 - p)
    norm = dropped.abs().sum()
    return dropped * (tau.abs().sum() / norm) if norm > 0 else dropped


def _tensor_generator(seed: int, name: str, i: int) -> torch.Generator:
    # Seeded by (seed, tensor name, expert): the same mask whatever order tensors are visited in.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 101 + i) % 2**63)


@register("dare", "DARE: random drop p + rescale, then task arithmetic or TIES", needs_base=True,
          p=Option(0.5, "drop probability", lambda v: 0 <= v < 1, "in [0, 1)"),
          rescale=Option("inverse", "'inverse' = ×1/(1−p) (paper, unbiased; also mergekit's dare_*); "
                         "'l1' = keep each τᵢ's L1 norm (mergekit's rescale for magnitude pruning)",
                         lambda v: v in ("inverse", "l1"), "'inverse' or 'l1'"),
          then=Option("task_arithmetic", "merge of the sparsified vectors: 'task_arithmetic' or 'ties'",
                      lambda v: v in ("task_arithmetic", "ties"), "'task_arithmetic' or 'ties'"),
          lam=Option(1.0, "scaling λ"), seed=Option(0, "seed of the drop masks"))
def _dare(tensors, base, w, ctx, p=0.5, rescale="inverse", then="task_arithmetic", lam=1.0, seed=0):
    taus = torch.stack([dare(t.double() - base.double(), p, rescale, _tensor_generator(seed, ctx["name"], i))
                        for i, t in enumerate(tensors)])
    merged = disjoint_merge(taus, w) if then == "ties" else (_bcast(w, taus[0]) * taus).sum(0)
    return base.double() + lam * merged


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 5e-4) -> torch.Tensor:
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


@register("slerp", "spherical interpolation of two models, per tensor", n_experts=2,
          t=Option(0.5, "position along the arc: 0 = first model, 1 = second"))
def _slerp(tensors, base, w, ctx, t=0.5):
    return slerp(tensors[0], tensors[1], t)


@register("fisher", "Fisher-weighted average: Σ wᵢFᵢθᵢ / Σ wᵢFᵢ (diagonal Fisher)", stats="fisher",
          eps=Option(1e-8, "added to every Fisher entry (so all-zero Fisher falls back to the average)"))
def _fisher(tensors, base, w, ctx, eps=1e-8):
    fishers = ctx["stats"]
    if fishers is None:  # a tensor the Fisher did not cover (e.g. frozen): plain average
        return _average(tensors, base, w, ctx)
    x = torch.stack(tensors).double()
    f = torch.stack(fishers).double() + eps
    wf = _bcast(w, x[0]) * f
    return (wf * x).sum(0) / wf.sum(0)


@register("regmean", "RegMean: Wᵀ = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢWᵢᵀ per linear layer, average elsewhere", stats="gram",
          alpha=Option(1.0, "off-diagonal scaling α of each Gram matrix", lambda v: 0 <= v <= 1, "in [0, 1]"),
          eps=Option(1e-6, "ridge εI (× mean diagonal) added when Σ G̃ᵢ is singular"))
def _regmean(tensors, base, w, ctx, alpha=1.0, eps=1e-6):
    grams = ctx["stats"]
    if grams is None or tensors[0].dim() != 2:  # not a hooked linear weight: biases, norms, embeddings
        return _average(tensors, base, w, ctx)
    gs = [alpha * g.double() + (1 - alpha) * torch.diag(torch.diagonal(g.double())) for g in grams]
    gs = [wi * g for wi, g in zip(w.tolist(), gs)]
    lhs = sum(gs)
    rhs = sum(g @ t.double().T for g, t in zip(gs, tensors))  # [in, out]
    try:
        sol = torch.linalg.solve(lhs, rhs)
        if not torch.isfinite(sol).all():
            raise torch.linalg.LinAlgError("non-finite solution")
    except torch.linalg.LinAlgError:
        ridge = eps * torch.diagonal(lhs).mean().clamp_min(1e-12)
        ctx["notes"].append(f"{ctx['name']}: Σ G singular, solved with εI (ε = {float(ridge):.3g})")
        sol = torch.linalg.solve(lhs + ridge * torch.eye(lhs.shape[0], dtype=lhs.dtype), rhs)
    return sol.T


def regression_loss(w: torch.Tensor, experts: list[torch.Tensor], grams: list[torch.Tensor]) -> float:
    """RegMean's objective for one linear layer, per token: Σᵢ tr((W − Wᵢ) Gᵢ (W − Wᵢ)ᵀ) = Σᵢ ‖XᵢWᵀ − XᵢWᵢᵀ‖²/nᵢ."""
    return float(sum(torch.trace((w.double() - wi.double()) @ g.double() @ (w.double() - wi.double()).T)
                     for wi, g in zip(experts, grams)))


# ------------------------------------------------------------------------------------------ driver
def resolve_options(method: Method, options: dict) -> dict:
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        raise MergeError(f"{method.name} has no option(s) {unknown}; fix: use {sorted(method.options) or 'none'}")
    out = {k: o.default for k, o in method.options.items()}
    out.update(options)
    for k, o in method.options.items():
        if o.check is not None and not o.check(out[k]):
            raise MergeError(f"{method.name}: {k}={out[k]!r} must be {o.rule}")
    return out


@dataclass
class MergeResult:
    state: StateDict
    method: str
    options: dict
    notes: list[str]


def merge(method: str, experts: list[StateDict], base: StateDict | None = None,
          stats: list[dict] | None = None, weights: Coefficients = None, filter: ParamFilter | None = None,
          names: list[str] | None = None, labels: list[str] | None = None, report: bool = False,
          sink: Callable[[str, torch.Tensor], None] | None = None, **options) -> StateDict | MergeResult:
    """Merge ``experts`` tensor by tensor with a registered method.

    Tensors that ``filter`` excludes are copied from ``base`` (or averaged when there is no base); integer
    buffers (e.g. position ids) are copied from the first expert. ``report=True`` returns a
    :class:`MergeResult` with the resolved options and any numerical notes (e.g. a ridge fallback).
    ``sink(name, tensor)``, if given, receives each merged tensor instead of the returned dict (streaming).
    Experts may be :class:`~fusionkit.weights.LazyState` views: each tensor is read when it is merged.
    """
    m = get_method(method)
    opts = resolve_options(m, options)
    if len(experts) < 2:
        raise MergeError(f"{method} needs at least 2 experts, got {len(experts)}")
    if m.n_experts is not None and len(experts) != m.n_experts:
        raise MergeError(f"{method} merges exactly {m.n_experts} models, got {len(experts)}")
    if m.needs_base and base is None:
        raise MergeError(f"{method} needs the base model θ₀ (task vectors are θᵢ − θ₀); fix: pass base=")
    if m.stats and stats is None:
        raise MergeError(f"{method} needs {m.stats} statistics; fix: measure them first "
                         f"(fusionkit.measure.{m.stats}_stats) and pass stats=")
    labels = labels or [f"expert {i}" for i in range(len(experts))]
    names = list(names if names is not None else experts[0])
    check_compatible(experts + ([base] if base is not None else []), names, labels + ["base"] * (base is not None))
    filter = filter or ParamFilter()
    notes: list[str] = []
    averaged: list[str] = []  # tensors a statistics-based method had no statistics for
    out = {}
    for name in names:
        tensors = [e[name] for e in experts]
        for t, label in zip(tensors, labels):
            check_finite(name, t, label)
        if not tensors[0].is_floating_point():
            _emit(out, sink, name, tensors[0].clone())
            continue
        b = base[name] if base is not None else None
        w = coefficients_for(name, weights, len(experts))
        if not filter(name):
            merged = b.double() if b is not None else _average(tensors, None, w, {})
        else:
            ctx = {"name": name, "notes": notes,
                   "stats": None if stats is None else _stats_for(name, stats, m.stats)}
            if m.stats and ctx["stats"] is None:
                averaged.append(name)
            merged = m.fn(tensors, b, w, ctx, **opts)
        _emit(out, sink, name, merged.to(tensors[0].dtype))
    if averaged:
        notes.append(f"{len(averaged)} tensors had no {m.stats} statistics and were simply averaged "
                     f"(e.g. {averaged[0]!r})")
    return MergeResult(out, method, opts, notes) if report else out


def _emit(out: dict, sink, name: str, tensor: torch.Tensor) -> None:
    if sink is None:
        out[name] = tensor
    else:
        sink(name, tensor)


def merge_files(method: str, experts: list[str], out: str, base: str | None = None, stats: list[dict] | None = None,
                **options) -> MergeResult:
    """Merge safetensors files into a safetensors file, streaming: each tensor is read from every input,
    merged and written before the next is read, so memory stays near one tensor per input."""
    from .weights import LazyState, SafetensorsWriter

    states = [LazyState(p) for p in experts]
    base_state = LazyState(base) if base is not None else None
    ref = states[0]
    layout = {n: (ref.dtype_name(n), ref.shape(n)) for n in ref}
    with SafetensorsWriter(out, layout, metadata={"format": "pt", "merge_method": method}) as writer:
        return merge(method, states, base=base_state, stats=stats, report=True, sink=writer.write,
                     labels=[str(p) for p in experts], **options)


def _stats_for(name: str, stats: list[dict], kind: str | None):
    """Per-expert statistics for one tensor: Fisher keyed by parameter, Gram keyed by the linear module."""
    key = name if kind == "fisher" else name.removesuffix(".weight")
    if kind == "gram" and not name.endswith(".weight"):
        return None
    found = [s.get(key) for s in stats]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        raise MergeError(f"{kind} statistics for {key!r} exist for some experts but not all; fix: measure them alike")
    return found


def describe_methods() -> list[dict]:
    """Every method with its needs and options, for ``fusionkit merge --list`` and notebooks."""
    return [{"method": m.name, "summary": m.summary, "needs_base": m.needs_base, "stats": m.stats,
             "n_experts": m.n_experts,
             "options": {k: {"default": o.default, "help": o.help} for k, o in m.options.items()}}
            for m in METHODS.values()]

