"""Task vectors pruned entry by entry before they are combined: Model Breadcrumbs (drop the largest outliers and the
smallest entries), DELLA (drop at random, less often the larger an entry), SCE (keep the entries that vary most
across the experts, weight the experts by their energy, erase sign conflicts) and MagMax (the largest-magnitude
entry wins). Masks and weights are per tensor, so every method streams through ``merge_files``."""
from __future__ import annotations

from ...core.errors import MergeError
from ...core.lazy import lazy_import
from ..ops import bcast, disjoint_merge, task_vector_merge, task_vectors, tensor_generator, weighted_sum
from ..registry import option, register

torch = lazy_import("torch")

FRACTION = (lambda v: 0 < v <= 1, "in (0, 1]")


def _taus(tensors, base):
    """Task vectors in float64: Breadcrumbs and SCE rank and sum whole tensors' entries."""
    return task_vectors(tensors, base, torch.float64)


# ---------------------------------------------------------------------------------------------- Breadcrumbs
def breadcrumb_mask(tau, density: float, gamma: float):
    """Keep the middle of one task vector's magnitudes: drop the ⌊γn⌋ largest (outliers) and then the smallest,
    so that ⌊density·n⌋ entries stay; where γ + density > 1 fewer outliers go, so the density holds.

    mergekit's ``magnitude_outliers`` counts the same way; it keeps nothing at all when ⌊γn⌋ = 0 (a slice that
    ends at ``-0``), e.g. every tensor under 100 entries at γ = 0.01 - here it keeps the ⌊density·n⌋ largest.
    Ties among equal magnitudes fall by position (a stable sort)."""
    n = tau.numel()
    if density >= 1:
        return tau
    keep = int(density * n)
    top = min(int(gamma * n), n - keep)
    bottom = n - keep - top
    order = torch.argsort(tau.reshape(-1).abs(), stable=True)  # ascending magnitude
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[bottom:n - top]] = True
    return tau * mask.view(tau.shape)


def _breadcrumbs(tensors, base, density, gamma):
    return torch.stack([breadcrumb_mask(t, density, gamma) for t in _taus(tensors, base)])


BREADCRUMB_OPTIONS = {
    "density": option("fraction of each task vector kept (after the outliers and the smallest entries go)", *FRACTION),
    "gamma": option("fraction of each task vector's largest-magnitude entries dropped as outliers",
                    lambda v: 0 <= v < 1, "in [0, 1)"),
    "lam": option("scaling λ of the merged task vector")}


@register("breadcrumbs", "Model Breadcrumbs: drop top-γ outliers and the smallest (keep density), then θ₀ + λΣwᵢτᵢ",
          needs_base=True, reference="https://arxiv.org/abs/2312.06795", **BREADCRUMB_OPTIONS)
def breadcrumbs(tensors, base, w, ctx, *, density=0.2, gamma=0.01, lam=1.0):
    """Model Breadcrumbs (Davari & Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
    Masks"): per tensor, mask each τᵢ to its mid-magnitude entries (:func:`breadcrumb_mask`: the γ largest are
    outliers, the smallest are noise, ``density`` of the entries stay), then task arithmetic,
    θ = θ₀ + λ Σ wᵢ m(τᵢ). mergekit's ``breadcrumbs`` (density, gamma, lambda; weight = wᵢ)."""
    taus = _breadcrumbs(tensors, base, density, gamma)
    return base.double() + lam * (bcast(w, taus[0]) * taus).sum(0)


@register("breadcrumbs_ties", "Breadcrumbs + TIES: the breadcrumb masks, then sign election and the disjoint mean",
          needs_base=True, reference="https://arxiv.org/abs/2312.06795", **BREADCRUMB_OPTIONS)
def breadcrumbs_ties(tensors, base, w, ctx, *, density=0.2, gamma=0.01, lam=1.0):
    """The breadcrumb masks of :func:`breadcrumbs`, then TIES's steps 2-3 (Yadav et al. 2023): elect
    s = sgn(Σ wᵢ m(τᵢ)) per entry and average the agreeing entries (disjoint mean), θ = θ₀ + λ·τ_M.
    mergekit's ``breadcrumbs_ties`` with ``normalize: true`` (its default, false, sums the agreeing entries)."""
    return base.double() + lam * disjoint_merge(_breadcrumbs(tensors, base, density, gamma), w)


# ---------------------------------------------------------------------------------------------- DELLA
def magprune(tau, density: float, epsilon: float, rescale: str, generator):
    """DELLA's MAGPRUNE on one task vector: within each row (the first dimension; a 1-D tensor is one row) rank the
    entries by magnitude, r = 0 … n−1 from the smallest, and keep each with probability
    qᵣ = (density − ε) + 2ε·r/(n−1) - from density − ε for the smallest to density + ε for the largest, mean
    density. Survivors are rescaled by 1/qᵣ ("inverse", the paper's 1/(1 − pᵢ), unbiased entry by entry), to
    keep the tensor's L1 norm ("l1", mergekit's ``rescale: true``) or not at all ("none").

    Rows are independent but for "l1", so ``tau`` may be a block of rows (drawn in order from one generator). The
    uniform draws are float64 from the CPU's generator, so a seed's masks are the same on every device."""
    if density >= 1:
        return tau
    rows = tau.reshape(tau.shape[0], -1) if tau.dim() >= 2 else tau.reshape(1, -1)
    n = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)
    # each entry's rank is the inverse permutation of the order: a scatter, where a second argsort would sort again
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=rows.device).expand_as(order)).double()
    spread = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    q = (density - epsilon) + 2 * epsilon * spread
    draws = torch.rand(rows.shape, generator=generator, dtype=torch.float64).to(rows.device)
    kept = rows * (draws < q)
    if rescale == "inverse":
        kept = kept / q
    elif rescale == "l1":
        norm = kept.abs().sum()
        kept = kept * (rows.abs().sum() / norm) if norm > 0 else kept
    return kept.reshape(tau.shape)


def _della(tensors, base, w, ctx, density, epsilon, rescale, lam, seed, method, combine):
    """θ₀ + λ·combine(MAGPRUNE(τᵢ)), row block by row block (one block for the L1 rescale), in float64: MAGPRUNE
    ranks |τᵢ| within a row, and θᵢ − θ₀ taken in float32 ties entries that float64 tells apart (where θᵢ and θ₀
    differ in sign: about 0.03% of SmolLM2's entries), which would move their keep probabilities by a rank."""
    if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
        raise MergeError(f"{method}: density ± epsilon must lie inside (0, 1), got density={density}, "
                         f"epsilon={epsilon}; fix: epsilon < {min(density, 1 - density):.6g}")
    gens = [tensor_generator(seed, ctx["name"], i) for i in range(len(tensors))]
    return task_vector_merge(tensors, base, w, ctx, lam, combine,
                             lambda tau, i: magprune(tau, density, epsilon, rescale, gens[i]),
                             whole=rescale == "l1" and density < 1, dtype=torch.float64)


DELLA_OPTIONS = {
    "density": option("mean keep probability of each task-vector entry (1 − p)", *FRACTION),
    "epsilon": option("half-width of the keep probabilities: density ± epsilon from the smallest to the largest "
                      "entry of a row (needs density ± epsilon inside (0, 1))", lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "rescale": option("'inverse' = each survivor ×1/q (the paper); 'l1' = keep each task vector's L1 norm "
                      "(mergekit's rescale: true); 'none'", lambda v: v in ("inverse", "l1", "none"),
                      "'inverse', 'l1' or 'none'"),
    "lam": option("scaling λ of the merged task vector"),
    "seed": option("seed of the drop masks")}


@register("della", "DELLA: magnitude-ranked random drops (MAGPRUNE) + rescale, then TIES sign election",
          needs_base=True, reference="https://arxiv.org/abs/2406.11617", **DELLA_OPTIONS)
def della(tensors, base, w, ctx, *, density=0.5, epsilon=0.15, rescale="inverse", lam=1.0, seed=0):
    """DELLA-Merging (Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model Merging through
    Magnitude-Based Sampling"): Drop with MAGPRUNE (:func:`magprune`: larger entries are dropped less), rescale
    the survivors, Elect a sign per entry s = sgn(Σ wᵢτ̃ᵢ), and Fuse the agreeing entries by their mean:
    θ = θ₀ + λ·τ_M. mergekit's ``della`` (density, epsilon, lambda; weight = wᵢ; normalize on). Masks are seeded
    per tensor and expert."""
    return _della(tensors, base, w, ctx, density, epsilon, rescale, lam, seed, "della", disjoint_merge)


@register("della_linear", "DELLA-linear: MAGPRUNE drops + rescale, then θ₀ + λΣwᵢτ̃ᵢ (no sign election)",
          needs_base=True, reference="https://arxiv.org/abs/2406.11617", **DELLA_OPTIONS)
def della_linear(tensors, base, w, ctx, *, density=0.5, epsilon=0.15, rescale="inverse", lam=1.0, seed=0):
    """DELLA's drop and rescale (:func:`magprune`) followed by task arithmetic, θ = θ₀ + λ Σ wᵢτ̃ᵢ (mergekit's
    ``della_linear``, normalize off). Masks are seeded per tensor and expert."""
    return _della(tensors, base, w, ctx, density, epsilon, rescale, lam, seed, "della_linear", weighted_sum)


# ---------------------------------------------------------------------------------------------- SCE
def variance_mask(taus, topk: float):
    """SCE's Select: keep the entries whose variance across the experts' task vectors is among the top ``topk``
    fraction of the entries that vary at all (⌊topk · #nonzero variances⌋ of them, as mergekit counts)."""
    if topk >= 1:
        return torch.ones(taus.shape[1:], dtype=torch.bool)
    var = taus.var(0, unbiased=False).reshape(-1)
    k = int(int(torch.count_nonzero(var)) * topk)
    mask = torch.zeros(var.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(var, k).indices] = True
    return mask.view(taus.shape[1:])


@register("sce", "SCE: select high-variance entries, weight experts by Σ τ², erase sign conflicts; θ₀ + Σ",
          needs_base=True, reference="https://arxiv.org/abs/2408.07990",
          select_topk=option("fraction of entries kept by their variance across the task vectors (1 = no selection)",
                             *FRACTION))
def sce(tensors, base, w, ctx, *, select_topk=1.0):
    """SCE (Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models", §3.3), per tensor: **Select** the entries
    whose variance across the task vectors is in the top ``select_topk`` (:func:`variance_mask`), zero the rest;
    **Calculate** one coefficient per expert from the selected task vector's energy, ηᵢ ∝ wᵢ·mean(τᵢ²)
    (uniform if every τᵢ is zero); **Erase** the entries whose sign disagrees with s = sgn(Σ wᵢτᵢ); then
    θ = θ₀ + Σ ηᵢ aᵢτᵢ / Σ ηᵢ aᵢ with aᵢ the agreement mask (0 where no expert agrees).

    As mergekit's ``sce`` (select_topk, default 1.0), except: mergekit falls back to uniform ηᵢ whenever
    Σ mean(τᵢ²) < 10⁻⁶ - most tensors of a typical fine-tune - the kit only when it is 0; mergekit elects + where
    Σ τᵢ = 0, the kit keeps nothing there; and the kit's coefficients wᵢ scale ηᵢ and the election (wᵢ = 1: same)."""
    taus = torch.stack(_taus(tensors, base))
    taus = taus * variance_mask(taus, select_topk)
    energy = w * (taus ** 2).reshape(len(tensors), -1).mean(1)
    eta = energy / energy.sum() if float(energy.sum()) > 0 else torch.full_like(energy, 1 / len(tensors))
    sign = torch.sign((bcast(w, taus[0]) * taus).sum(0))
    agree = (torch.sign(taus) == sign) & (taus != 0)
    weights = bcast(eta, taus[0]) * agree
    num, den = (weights * taus).sum(0), weights.sum(0)
    return base.double() + torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


# ---------------------------------------------------------------------------------------------- MagMax
@register("magmax", "MagMax: per entry the largest-magnitude task vector wins; θ₀ + λ·τ_max",
          needs_base=True, reference="https://arxiv.org/abs/2407.06322",
          lam=option("scaling λ of the selected task vector (0.5: the authors' released script)"))
def magmax(tensors, base, w, ctx, *, lam=0.5):
    """MagMax (Marczak et al. 2024, "MagMax: Leveraging Model Merging for Seamless Continual Learning"): per entry
    j, τ_max[j] = τ_{i*}[j] with i* = argmaxᵢ |wᵢτᵢ[j]| (of the coefficient-scaled task vectors; wᵢ = 1 in the
    paper), and θ = θ₀ + λ·τ_max. Ties go to the later expert, as in the authors' code."""
    best = None
    for wi, tau in zip(w.tolist(), _taus(tensors, base)):
        tau = wi * tau
        best = tau if best is None else torch.where(tau.abs() >= best.abs(), tau, best)
    return base.double() + lam * best
