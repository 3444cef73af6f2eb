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


@register("regmean_plus", "RegMean++: RegMean layer by layer, each layer's Gram matrices measured through the "
          "merged model's own lower layers", level="zoo", reference="https://arxiv.org/abs/2508.03121",
          alpha=option("off-diagonal scaling α of each Gram matrix", lambda v: 0 <= v <= 1, "in [0, 1]"),
          eps=option("ridge εI (× mean diagonal) added when Σ G̃ᵢ is singular"))
def regmean_plus(zoo, evaluator, experts: list[str] | None = None, *, alpha=1.0, eps=1e-6):
    """RegMean++ (Nguyen et al. 2025, "RegMean++: Enhancing Effectiveness and Generalization of Regression Mean
    for Model Merging"): RegMean's closed form per linear layer, but the inputs Xᵢ of block l are what expert i's
    data looks like after the *merged* blocks below l, not after expert i's own - the merged layer then fits the
    inputs it will actually receive (RegMean ignores that its lower layers changed). Blocks are merged bottom-up:
    embeddings averaged (no linear layer), then each transformer block from Gram matrices measured on every
    expert's training texts through {merged blocks < l, expert i's block l}, then the rest (pooler; fused heads).
    (L + 1) forward passes over each expert's statistics budget; not cached, as the inputs depend on the merge.
    Zoo level: it needs the experts' data and merges as it measures. Returns the merge and a trace of each block's
    seconds."""
    import re
    import time

    from ...models.experts import check_experts
    from ...models.heads import fused_heads, head_policy, split_head
    from ..merge import merge
    from ..statistics import gram_stats
    from ..zoo_merge import Merged

    pool = [zoo.expert(n) for n in experts] if experts else list(zoo.experts)
    check_experts(pool)
    t0 = time.perf_counter()
    states = [e.state_dict() for e in pool]
    policy = head_policy(pool, states=states)
    names = list(policy.fused_part(states[0]))
    block_of = {}
    for n in names:
        # a transformer block: BERT's encoder.layer.N, llama's model.layers.N, GPT-2's h.N
        m = re.match(r"^(.*\.(?:layer|layers|h)\.\d+)\.", n)
        block_of[n] = m.group(1) if m else ("embeddings" if "embed" in n else "rest")
    order = ["embeddings"] + list(dict.fromkeys(b for b in block_of.values() if b not in ("embeddings", "rest")))
    order.append("rest")
    model, tokenizer = pool[0].load()
    prefixes = pool[0].head_prefixes
    merged: dict = {}
    trace, notes = [], []
    for block in order:
        group = [n for n in names if block_of[n] == block]
        if not group:
            continue
        t1 = time.perf_counter()
        grams = None
        linear = {n.removesuffix(".weight") for n in group if n.endswith(".weight") and states[0][n].dim() == 2}
        if linear and block != "embeddings":
            grams = []
            for e, s in zip(pool, states):
                body = split_head({**s, **merged}, prefixes)[0]  # expert i below is replaced by the merge so far
                model.load_state_dict(body, strict=False)
                grams.append(gram_stats(model, tokenizer, zoo.train_tasks[e.name], examples=zoo.profile.stats_examples,
                                        max_length=zoo.profile.max_length, seed=0, modules=linear))
        res = merge("regmean" if grams else "average", [{n: s[n] for n in group} for s in states], stats=grams,
                    names=group, labels=[e.name for e in pool], report=True,
                    **({"alpha": alpha, "eps": eps} if grams else {}))
        merged.update(res.state)
        notes += res.notes
        trace.append({"block": block, "tensors": len(group), "seconds": round(time.perf_counter() - t1, 2)})
    body, merged_head = split_head(merged, policy.prefixes)
    heads = fused_heads(pool, merged_head) if policy.fused_heads else policy.heads
    out = Merged("regmean_plus", {"alpha": alpha, "eps": eps}, body, heads, policy.fused_heads, pool, notes,
                 time.perf_counter() - t0)
    return out, trace
