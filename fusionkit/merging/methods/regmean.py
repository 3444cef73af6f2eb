"""RegMean: the closed-form merge of linear layers that best reproduces every expert's outputs on its own inputs."""
from __future__ import annotations

from ...core.lazy import lazy_import
from ..registry import option, register
from .averaging import average

torch = lazy_import("torch")


@register("regmean", "RegMean: Wᵀ = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢWᵢᵀ per linear layer, average elsewhere", stats="gram",
          reference="https://arxiv.org/abs/2212.09849",
          alpha=option("off-diagonal scaling α of each Gram matrix", lambda v: 0 <= v <= 1, "in [0, 1]"),
          eps=option("ridge εI (× mean diagonal) added when Σ G̃ᵢ is singular"))
def regmean(tensors, base, w, ctx, *, alpha=1.0, eps=1e-6):
    """RegMean (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models"): for a linear
    layer y = Wx with inputs Xᵢ in expert i, min_W Σᵢ ‖XᵢWᵀ − XᵢWᵢᵀ‖² gives Wᵀ = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢWᵢᵀ with
    Gᵢ = XᵢᵀXᵢ and G̃ᵢ = αGᵢ + (1−α)diag(Gᵢ). Every other tensor (biases, norms, embeddings) is simply averaged."""
    grams = ctx["stats"]
    if grams is None or tensors[0].dim() != 2:  # not a hooked linear weight
        return average(tensors, base, w, ctx)
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


def regression_loss(w, experts, grams) -> float:
    """RegMean's objective for one linear layer, per token: Σᵢ tr((W − Wᵢ) Gᵢ (W − Wᵢ)ᵀ) = Σᵢ ‖XᵢWᵀ − XᵢWᵢᵀ‖²/nᵢ."""
    return float(sum(torch.trace((w.double() - wi.double()) @ g.double() @ (w.double() - wi.double()).T)
                     for wi, g in zip(experts, grams)))
