"""Merges built from per-task masks over one shared task vector: EMR-merging and TALL masks (a light model per
task, level ``"task"``, see :mod:`fusionkit.merging.task_models`), and consensus merging (one model: the entries
that at least k tasks' TALL masks keep).

Notation: θ₀ base, τᵢ = θᵢ − θ₀, wᵢ coefficients; masks are per entry, so every method streams tensor by tensor.
"""
from __future__ import annotations

from ...core.lazy import lazy_import
from ..ops import task_vectors, weighted_sum
from ..registry import option, register
from ..task_models import TaskParts

torch = lazy_import("torch")


def _taus(tensors, base):
    """Task vectors in float32: masks compare and select entries, so float64 would change no mask and cost 2x
    (sums that divide - EMR's rescaler terms - are taken in float64)."""
    return task_vectors(tensors, base, torch.float32)


# ---------------------------------------------------------------------------------------------- EMR-merging
def elect(taus):
    """EMR's unified task vector: per entry the sign of Στᵢ and, among the τᵢ that agree with it, the largest
    magnitude, τ_uni = γ ⊙ ε with γ = sgn(Στᵢ), ε = max{|τᵢ| : τᵢγ > 0}. Where Στᵢ = 0 nothing is elected (0)."""
    sign = torch.sign(sum(taus))
    eps = torch.zeros_like(taus[0])
    for t in taus:
        eps = torch.maximum(eps, (t * sign > 0) * t.abs())
    return sign * eps


@register("emr", "EMR-merging: elect one task vector τ_uni; per task a mask (agreeing signs) and a rescaler",
          level="task", needs_base=True, reference="https://arxiv.org/abs/2405.17461")
def emr(tensors, base, w, ctx):
    """EMR-merging (Huang et al. 2024, "EMR-Merging: Tuning-Free High-Performance Model Merging"), tuning-free and
    data-free. Elect τ_uni (:func:`elect`); task i's mask Mᵢ = [τᵢ ⊙ τ_uni > 0] keeps the entries where it agrees
    with the elected sign; its rescaler sᵢ = Σ|τᵢ| / Σ|Mᵢ ⊙ τ_uni| (sums over every merged tensor, the paper's
    eq. 5) restores τᵢ's mean magnitude; task i runs θ₀ + sᵢ·(Mᵢ ⊙ τ_uni). The coefficients wᵢ weight nothing here
    (the method has no weights); FusionBench sums per-tensor *means* in sᵢ instead of whole-model sums, which
    weights every tensor alike - the paper's whole-model ratio is used here."""
    taus = _taus(tensors, base)
    uni = elect(taus)
    masks = [t * uni > 0 for t in taus]
    mag = uni.abs()
    terms = [(float(t.abs().sum(dtype=torch.float64)), float((mag * m).sum(dtype=torch.float64)))
             for t, m in zip(taus, masks)]
    return TaskParts(uni, masks, terms)


# ---------------------------------------------------------------------------------------------- TALL masks
def tall_mask(tau, merged, lam: float):
    """TALL mask of one task: keep the entries where the merged model is closer to the task's model than θ₀ is,
    m = [|τₜ| ≥ λ·|τ_MTL − τₜ|] (Wang et al. 2024, eq. 3: |θ₀ − θₜ| ≥ λ|θ_MTL − θₜ|)."""
    return tau.abs() >= lam * (merged - tau).abs()


def multitask_vector(taus, w, alpha: float):
    """τ_MTL = α Σ wᵢτᵢ: task arithmetic's merged task vector, the one TALL masks select from."""
    return alpha * weighted_sum(taus, w)


MASK_OPTIONS = {
    "lam": option("mask threshold λ: keep an entry for task t where |τₜ| ≥ λ|τ_MTL − τₜ| (the paper picks λ per "
                  "task from 0.2-0.6 on validation: choose_per_task)", lambda v: v >= 0, ">= 0"),
    "alpha": option("scaling α of the multi-task vector τ_MTL = αΣwᵢτᵢ (1: FusionBench's tall_mask_task_arithmetic)")}


@register("tall_masks", "TALL masks: per task the entries of τ_MTL = αΣwᵢτᵢ where it is close to the task's model",
          level="task", needs_base=True, reference="https://arxiv.org/abs/2405.07813", **MASK_OPTIONS)
def tall_masks(tensors, base, w, ctx, *, lam=0.4, alpha=1.0):
    """TALL masks (Wang et al. 2024, "Localizing Task Information for Improved Model Merging and Compression"):
    task t runs θ₀ + mₜ ⊙ τ_MTL with mₜ = :func:`tall_mask` - the merged vector where it helps task t, the base
    elsewhere. No rescaler. λ trades what task t keeps of the others (small λ: more of τ_MTL) against interference;
    the paper chooses it per task on validation (:func:`~fusionkit.merging.zoo_merge.choose_per_task`)."""
    taus = _taus(tensors, base)
    merged = multitask_vector(taus, w, alpha)
    return TaskParts(merged, [tall_mask(t, merged, lam) for t in taus])


@register("consensus", "Consensus merging: θ₀ + τ_MTL on the entries at least k tasks' TALL masks keep",
          needs_base=True, reference="https://arxiv.org/abs/2405.07813",
          k=option("keep an entry that at least k tasks' masks keep (2 drops 'selfish' and 'catastrophic' weights; "
                   "0 = task arithmetic)", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
          lam=option("TALL mask threshold λ of every task's mask (the paper's consensus uses the masks' λ)",
                     lambda v: v >= 0, ">= 0"),
          alpha=option("scaling α of τ_MTL = αΣwᵢτᵢ (0.4: task_arithmetic's default λ, so k = 0 is task_arithmetic)"))
def consensus(tensors, base, w, ctx, *, k=2, lam=0.4, alpha=0.4):
    """Consensus merging (Wang et al. 2024, §5): one model, θ = θ₀ + m_k ⊙ τ_MTL with m_k = [Σₜ mₜ ≥ k] over the
    TALL masks - an entry that only one task uses ("selfish") or none ("catastrophic") is dropped as
    interference. k = 0 keeps every entry: task arithmetic with λ = α."""
    taus = _taus(tensors, base)
    merged = multitask_vector(taus, w, alpha)
    votes = sum(tall_mask(t, merged, lam).to(torch.int32) for t in taus)
    return base.double() + (votes >= k) * merged.double()
