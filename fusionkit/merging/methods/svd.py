"""Task vectors merged as matrices, through their singular value decompositions: TSV-M (each task's top singular
vectors, decorrelated across tasks), ISO-C (the summed task matrix with a flat spectrum) and ISO-CTS (a common
subspace plus task-specific ones, then a flat spectrum).

Per 2-D weight; every other tensor (biases, LayerNorm, 1-D in general) gets the coefficient-weighted mean task
vector, θ₀ + λ·Σ wᵢτᵢ / Σ wᵢ, as FusionBench does for these methods. The coefficients scale each task vector
before any decomposition (FusionBench's per-task alphas); wᵢ = 1 is the papers' setting. Embedding matrices are
2-D and are decomposed like any other weight.
"""
from __future__ import annotations

from ...core.lazy import lazy_import
from ..ops import task_vectors
from ..registry import option, register

torch = lazy_import("torch")


def _scaled_taus(tensors, base, w):
    return [wi * tau for wi, tau in zip(w.tolist(), task_vectors(tensors, base, torch.float64))]


def _mean(taus, w):
    return sum(taus) / w.sum()


def polar(x):
    """The orthogonal polar factor P·Qᵀ of x = P·Σ·Qᵀ: the nearest matrix with orthonormal columns (or rows)."""
    p, _, qt = torch.linalg.svd(x, full_matrices=False)
    return p @ qt


@register("tsv_m", "TSV-M: each task's top r/k singular vectors, decorrelated across tasks; θ₀ + λ·Σ",
          needs_base=True, reference="https://arxiv.org/abs/2412.00081",
          lam=option("scaling λ of the merged task matrix"))
def tsv_m(tensors, base, w, ctx, *, lam=1.0):
    """Task Singular Vectors: Merge (Gargiulo et al. 2025, "Task Singular Vectors: Reducing Task Interference in
    Model Merging", §4): for a weight of rank r = min(m, n) and k tasks, take each τᵢ = UᵢΣᵢVᵢᵀ to its top
    ⌊r/k⌋ singular triplets, concatenate U = [U₁ … U_k], Σ = diag(Σ₁ … Σ_k), V = [V₁ … V_k], decorrelate the
    tasks' singular vectors by replacing U and V with their orthogonal polar factors (U⊥ = PQᵀ from U = PSQᵀ,
    likewise V), and θ = θ₀ + λ·U⊥ΣV⊥ᵀ. So the merged task matrix's singular values are exactly the kept ones.

    As FusionBench's TSV-M. Where ⌊r/k⌋ = 0 (more tasks than the rank) FusionBench's merge is zero; the kit uses
    the mean task vector there and says so in a note. Other tensors: the mean task vector (see the module)."""
    taus = _scaled_taus(tensors, base, w)
    if taus[0].dim() != 2:
        return base.double() + lam * _mean(taus, w)
    k, r = len(taus), min(taus[0].shape)
    per = r // k
    if per == 0:
        ctx["notes"].append(f"{ctx['name']}: tsv_m has rank {r} for {k} tasks (0 singular vectors each); "
                            "used the mean task vector")
        return base.double() + lam * _mean(taus, w)
    us, ss, vts = [], [], []
    for tau in taus:
        u, s, vt = torch.linalg.svd(tau, full_matrices=False)
        us.append(u[:, :per])
        ss.append(s[:per])
        vts.append(vt[:per])
    merged = polar(torch.cat(us, 1)) @ torch.diag(torch.cat(ss)) @ polar(torch.cat(vts, 0))
    return base.double() + lam * merged


@register("iso_c", "ISO-C: SVD of Στᵢ with every singular value replaced by their mean; θ₀ + λ·Σ̄UVᵀ",
          needs_base=True, reference="https://arxiv.org/abs/2502.04959",
          lam=option("scaling α of the merged task matrix"))
def iso_c(tensors, base, w, ctx, *, lam=1.0):
    """Isotropic merging in the common subspace (Marczak et al. 2025, "No Task Left Behind: Isotropic Model
    Merging with Common and Task-Specific Subspaces", §4.1): Δ = Σ wᵢτᵢ = UΣVᵀ, then flatten the spectrum,
    θ = θ₀ + λ·σ̄·UVᵀ with σ̄ = mean of Σ over all min(m, n) singular values, so every direction Δ spans counts
    alike. As FusionBench's ISO-C (its ``scaling_factor`` is λ). Other tensors: the mean task vector."""
    taus = _scaled_taus(tensors, base, w)
    if taus[0].dim() != 2:
        return base.double() + lam * _mean(taus, w)
    u, s, vt = torch.linalg.svd(sum(taus), full_matrices=False)
    return base.double() + lam * s.mean() * (u @ vt)


def cts_split(r: int, k: int, fraction: float) -> tuple[int, int]:
    """ISO-CTS's dimensions for a rank-r weight and k tasks: (common, per task), with common + k·per = r.
    FusionBench's reading: common = ⌊r·fraction⌋, per = round((r − common)/k), and the common subspace takes what
    the rounding leaves; per is capped at ⌊r/k⌋ so the common size never goes negative (FusionBench's can)."""
    common = int(r * fraction)
    per = min(round((r - common) / k), r // k)
    return r - k * per, per


@register("iso_cts", "ISO-CTS: common subspace of Στᵢ plus each task's own residual directions, flat spectrum",
          needs_base=True, reference="https://arxiv.org/abs/2502.04959",
          lam=option("scaling α of the merged task matrix"),
          common_space_fraction=option("fraction of the rank given to the common subspace (the rest is split "
                                       "evenly among the tasks)", lambda v: 0 <= v <= 1, "in [0, 1]"))
def iso_cts(tensors, base, w, ctx, *, lam=1.0, common_space_fraction=0.8):
    """Isotropic merging in common and task-specific subspaces (Marczak et al. 2025, §4.2): with r = min(m, n) split
    as (c, s) by :func:`cts_split`, take the common subspace from Δ = Σ wᵢτᵢ = UΣVᵀ, its top c triplets; for each
    task, project τᵢ off the common left subspace, τᵢ − U_cU_cᵀτᵢ, and take that residual's top s triplets;
    stack the c + k·s left and right vectors, orthogonalise each stack by its polar factor (as TSV-M), and
    flatten the spectrum: θ = θ₀ + λ·σ̄·U⊥V⊥ᵀ, σ̄ the mean of the stacked singular values (common ones from Δ,
    task-specific ones from the residuals).

    Read from FusionBench's ISO-CTS (the paper leaves the split's rounding open): the residual is projected on the
    left (column) space only, and the mean σ̄ mixes Δ's and the residuals' singular values. With
    ``common_space_fraction`` = 1 it is ISO-C. Other tensors: the mean task vector."""
    taus = _scaled_taus(tensors, base, w)
    if taus[0].dim() != 2:
        return base.double() + lam * _mean(taus, w)
    r = min(taus[0].shape)
    common, per = cts_split(r, len(taus), common_space_fraction)
    u, s, vt = torch.linalg.svd(sum(taus), full_matrices=False)
    uc, sc, vtc = u[:, :common], s[:common], vt[:common]
    us, ss, vts = [uc], [sc], [vtc]
    if per > 0:
        for tau in taus:
            ut, st, vtt = torch.linalg.svd(tau - uc @ (uc.T @ tau), full_matrices=False)
            us.append(ut[:, :per])
            ss.append(st[:per])
            vts.append(vtt[:per])
    sigma = torch.cat(ss).mean()
    return base.double() + lam * sigma * (polar(torch.cat(us, 1)) @ polar(torch.cat(vts, 0)))
