"""Merges chosen by the geometry of the weights: Model Stock (how far to move from θ₀ toward the average, from the
angle between the task vectors), the Karcher mean and Multi-SLERP (spherical means of many models) and NearSwap
(take a second model's entries only where they are already close). All per tensor."""
from __future__ import annotations

from ...core.errors import MergeError
from ...core.lazy import lazy_import
from ..registry import option, register

torch = lazy_import("torch")


def _rows(x, filter_wise: bool):
    """A tensor as rows: one row per output unit (first dimension) when ``filter_wise``, else one flat row."""
    if filter_wise and x.dim() >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


@register("model_stock", "Model Stock: θ₀ + t(θ̄ − θ₀), t = k·cos / (1 + (k−1)·cos) from the task vectors' angle",
          needs_base=True, reference="https://arxiv.org/abs/2403.19522",
          filter_wise=option("one t per output row (first dimension) instead of one per tensor (mergekit's option)"))
def model_stock(tensors, base, w, ctx, *, filter_wise=False):
    """Model Stock (Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models", eq. 2-3): with k
    fine-tunes of one base, cos θ = the mean pairwise cosine of the task vectors τᵢ = θᵢ − θ₀,
    t = k·cos θ / (1 + (k−1)·cos θ) and θ = t·θ̄ + (1 − t)·θ₀, θ̄ = Σ wᵢθᵢ / Σ wᵢ (the plain mean at wᵢ = 1).

    Per tensor, as mergekit's ``model_stock`` (the paper derives t per layer); ``filter_wise`` gives each output
    row its own t. A pair with a zero task vector counts as orthogonal (cos 0). With an obtuse mean angle t < 0
    (the formula's value, as in mergekit); the mean cosine is never below −1/(k−1), and where 1 + (k−1)·cos θ
    vanishes (the unit task vectors sum to zero) t = 0 and a note says so."""
    k = len(tensors)
    if k < 2:
        raise MergeError(f"model_stock needs at least 2 fine-tuned models besides the base, got {k}; "
                         "fix: pass two or more experts")
    b = _rows(base.double(), filter_wise)
    taus = torch.stack([_rows(t.double(), filter_wise) - b for t in tensors])  # [k, rows, cols]
    norms = taus.norm(dim=-1)  # [k, rows]
    cosines = []
    for i in range(k):
        for j in range(i + 1, k):
            denom = norms[i] * norms[j]
            dot = (taus[i] * taus[j]).sum(-1)
            cosines.append(torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0)  # [rows]
    denom = 1 + (k - 1) * cos
    degenerate = denom.abs() < 1e-12
    if degenerate.any():
        ctx["notes"].append(f"{ctx['name']}: model_stock's unit task vectors sum to zero; t = 0 (θ₀) there")
    t = torch.where(degenerate, torch.zeros_like(cos), k * cos / torch.where(degenerate, torch.ones_like(denom), denom))
    mean = sum(wi * (_rows(x.double(), filter_wise)) for wi, x in zip(w.tolist(), tensors)) / w.sum()
    out = t[:, None] * mean + (1 - t[:, None]) * b
    return out.reshape(base.shape)


def _normalized(name: str, w):
    if (w < 0).any() or float(w.sum()) <= 0:
        raise MergeError(f"{name}: coefficients {w.tolist()} must be non-negative with a positive sum "
                         "(they weight a mean on the sphere); fix: pass non-negative weights")
    return w / w.sum()


def spherical_mean(xs, w, max_iter: int, tol: float):
    """The weighted Fréchet (Karcher) mean of the directions of the rows of ``xs`` [N, D] on the unit sphere,
    scaled by the weighted mean norm Σ wᵢ‖xᵢ‖ (``w`` sums to 1).

    Start from the normalised weighted Euclidean mean; then repeat u ← exp_u(Σ wᵢ log_u(x̂ᵢ)) with
    log_u(x) = θ/sin θ · (x − cos θ · u), θ = arccos⟨u, x⟩, until the step's norm is below ``tol`` or ``max_iter``
    steps are done. Zero rows have no direction: they count in the scale only. An antipodal point (θ = π) has no
    unique geodesic and adds nothing to a step."""
    norms = xs.norm(dim=1)
    scale = (w * norms).sum()
    valid = norms > 0
    if not valid.any():
        return torch.zeros(xs.shape[1], dtype=xs.dtype)
    units = xs[valid] / norms[valid, None]
    wv = w[valid] / w[valid].sum()
    u = (wv[:, None] * units).sum(0)
    u = units[0].clone() if u.norm() < 1e-12 else u / u.norm()
    for _ in range(max_iter):
        cos = (units @ u).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        sin = torch.sin(theta)
        factor = torch.where(sin > 1e-12, theta / sin.clamp_min(1e-12), torch.where(theta < 1, 1.0, 0.0))
        step = ((wv * factor)[:, None] * (units - cos[:, None] * u)).sum(0)
        size = step.norm()
        if size < tol:
            break
        u = torch.cos(size) * u + torch.sin(size) * (step / size)
        u = u / u.norm()
    return scale * u


@register("karcher", "Karcher mean: the weighted Fréchet mean on the unit sphere, scaled to the mean norm",
          reference="https://doi.org/10.1002/cpa.3160300502",
          max_iter=option("most fixed-point steps on the sphere", lambda v: isinstance(v, int) and v >= 0,
                          "an int ≥ 0"),
          tol=option("stop when a step is shorter than this (radians)", lambda v: v > 0, "> 0"))
def karcher(tensors, base, w, ctx, *, max_iter=10, tol=1e-5):
    """The Riemannian centre of mass (Karcher 1977, "Riemannian center of mass and mollifier smoothing") of the
    flattened tensors' directions on the unit sphere, u = argmin Σ wᵢ d(u, θ̂ᵢ)² with d the great-circle angle,
    found by :func:`spherical_mean`; θ = (Σ wᵢ‖θᵢ‖) · u with w normalised to sum 1. For two models at equal
    weights this is SLERP at t = 0.5 (rescaled to the mean norm). mergekit's ``karcher`` (same defaults) weights
    every model equally; here the coefficients w weight the mean (wᵢ = 1: the same)."""
    xs = torch.stack([t.double().reshape(-1) for t in tensors])
    return spherical_mean(xs, _normalized("karcher", w), max_iter, tol).reshape(tensors[0].shape)


@register("multislerp", "Multi-SLERP: weighted spherical average of ≥ 2 models (or of their task vectors)",
          reference="https://doi.org/10.1145/502122.502124",
          task_vectors=option("average the task vectors θᵢ − θ₀ and add θ₀, as mergekit does given a base_model "
                              "(needs merge(..., base=) or merge_files; merge_zoo passes θ₀ only to methods "
                              "that need it)"),
          max_iter=option("most fixed-point steps on the sphere", lambda v: isinstance(v, int) and v >= 1,
                          "an int ≥ 1"),
          tol=option("stop when a step is shorter than this (radians)", lambda v: v > 0, "> 0"))
def multislerp(tensors, base, w, ctx, *, task_vectors=False, max_iter=20, tol=1e-9):
    """SLERP for more than two models: the weighted spherical average of Buss & Fillmore (2001, "Spherical
    averages and applications to spherical splines and interpolation"), u = argmin Σ wᵢ d(u, x̂ᵢ)², scaled by the
    weighted mean norm Σ wᵢ‖xᵢ‖ (w normalised), with xᵢ = θᵢ or, with ``task_vectors``, xᵢ = τᵢ and θ = θ₀ + ….
    For two models with coefficients (1 − t, t) the average is exactly SLERP(t) between their directions: on one
    great circle the fixed-point iteration lands on it in one step.

    mergekit's ``multislerp`` takes a single tangent-space step at the normalised Euclidean mean; the weighted
    tangent vectors there sum to zero, so its result is that normalised mean (NLERP) times the mean norm. The two
    agree for two models at equal weights and differ slightly otherwise; this one is the spherical average."""
    if task_vectors and base is None:
        raise MergeError("multislerp: task_vectors=True averages θᵢ − θ₀ and needs the base model; "
                         "fix: pass base= (or task_vectors=False)")
    ref = base.double().reshape(-1) if task_vectors else 0.0
    xs = torch.stack([t.double().reshape(-1) - ref for t in tensors])
    out = spherical_mean(xs, _normalized("multislerp", w), max_iter, tol) + ref
    return out.reshape(tensors[0].shape)


@register("nearswap", "NearSwap: move θ_A to θ_B by min(1, t/|θ_A − θ_B|) per entry (where they are close)",
          n_experts=2, reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
          t=option("closeness scale: entries closer than t are swapped to the second model", lambda v: v >= 0, "≥ 0"))
def nearswap(tensors, base, w, ctx, *, t=1e-4):
    """NearSwap (Sharma 2024, the QuartetAnemoi-70B-t0.0001 merge; mergekit's ``nearswap``): per entry,
    s = clamp(t / max(|θ_A − θ_B|, 10⁻⁶), 0, 1) and θ = θ_A + s·(θ_B − θ_A), θ_A the first expert (mergekit's
    base_model), θ_B the second: entries where the two agree to within t become θ_B's, entries that differ a lot
    stay θ_A's. t = 0 gives θ_A; t → ∞ gives θ_B."""
    a, b = tensors[0].double(), tensors[1].double()
    s = (t / (a - b).abs().clamp_min(1e-6)).clamp(0.0, 1.0)
    return a + s * (b - a)
