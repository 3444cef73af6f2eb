"""AdaMerging: task arithmetic's coefficients learned on unlabeled dev text by minimising the merged model's
prediction entropy (zoo level: it reads the tasks' dev texts, never their labels)."""
from __future__ import annotations

import time
from typing import Callable

from ...core.errors import MergeError
from ..registry import option, register

GRANULARITY = ("task", "layer")


def entropy(logits):
    """Mean Shannon entropy of softmax(logits) over a batch: −(1/B) Σ_b Σ_c p_bc log p_bc (nats)."""
    import torch

    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1).mean()


def combine(base: dict, taus: dict, lam, names: list[str]) -> dict:
    """θ(λ) = θ₀ + Σᵢ λᵢ τᵢ per tensor, differentiable in λ: ``taus[n]`` is the experts' stacked task vectors
    ``[k, *shape]``; ``lam`` is ``[k]`` (one λ per expert) or ``[k, len(names)]`` (one per expert and tensor).
    The same model as ``merge("task_arithmetic", lam=1, weights=λ)`` (weights ``{name: λ[:, j]}`` per tensor)."""
    import torch

    out = {}
    for j, n in enumerate(names):
        col = lam if lam.dim() == 1 else lam[:, j]
        out[n] = base[n] + torch.tensordot(col.to(taus[n].dtype), taus[n], dims=1)
    return out


def dev_texts(zoo, tasks, texts: dict | None = None) -> dict[str, list[str]]:
    """Each task's unlabeled text: ``texts[task]`` where given, else the text column of its validation split."""
    out = {}
    for t in tasks:
        if texts is not None and t in texts:
            out[t] = list(texts[t])
        elif "validation" in zoo.tasks[t].data:
            out[t] = list(zoo.tasks[t].data["validation"]["text"])
        else:
            out[t] = []
    empty = [t for t, v in out.items() if not v]
    if empty:
        raise MergeError(f"AdaMerging learns its coefficients on unlabeled text of every task, and {empty} have none; "
                         "fix: give those tasks a validation split, or pass texts={task: [str, ...]}")
    return out


@register("adamerging", "AdaMerging: task arithmetic's λ (per task, or per task and tensor) learned by minimising the "
          "merged model's prediction entropy on unlabeled dev text", level="zoo",
          reference="https://arxiv.org/abs/2310.02575",
          granularity=option("'task': one λ per expert (task-wise); 'layer': one per expert and parameter tensor "
                             "(layer-wise, the paper's best)", lambda v: v in GRANULARITY, "'task' or 'layer'"),
          steps=option("Adam steps on λ (the paper: 500)", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
          lr=option("Adam learning rate (the paper: 1e-3)", lambda v: v > 0, "> 0"),
          init=option("initial λ of every expert (the paper: 0.3)", lambda v: 0 <= v <= 1, "in [0, 1]"),
          batch_size=option("unlabeled texts per task per step (the paper: 16)",
                            lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
          seed=option("seed of the batch order"))
def adamerging(zoo, evaluator, experts: list[str] | None = None, *, granularity="layer", steps=100, lr=1e-3,
               init=0.3, batch_size=16, seed=0):
    """The registry's entry: :func:`adamerge` with no live curve."""
    return adamerge(zoo, experts, granularity=granularity, steps=steps, lr=lr, init=init, batch_size=batch_size,
                    seed=seed)


def adamerge(zoo, experts: list[str] | None = None, *, granularity: str = "layer", steps: int = 100,
             lr: float = 1e-3, init: float = 0.3, batch_size: int = 16, seed: int = 0, texts: dict | None = None,
             callback: Callable[[dict], None] | None = None, quiet: bool = False):
    """AdaMerging (Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR):

        θ(λ) = θ₀ + Σᵢ λᵢ τᵢ,   λ* = argmin_λ Σₜ E_{x ∈ Dₜ} H(p_θ(λ)(y | x)),   λ clipped to [0, 1] after each step,

    with λᵢ one per expert (task-wise) or one per expert and parameter tensor (layer-wise: the authors' code gives
    every tensor its own λ). Entropy stands in for the loss because it needs no labels: the paper shows it falls
    and rises with the cross-entropy. Dₜ is task t's *validation* text (the paper adapts on the unlabeled test
    inputs - transductive; here test stays unseen) or ``texts[t]``. Gradients reach λ through
    ``torch.func.functional_call`` on one live model: one body forward per step on every task's batch together,
    each task's head applied to its slice (experts that share a label space run the merged head instead).

    Returns ``(merged, trace)``: the merge is task arithmetic with λ as its coefficients (``merged.weights``: a
    list, or ``{tensor: [λᵢ]}``), built by the registry's task_arithmetic; ``trace`` has every step's
    ``{"step", "entropy", "per_task", "seconds"}`` - ``callback`` sees each as it is made (a live curve:
    ``callback=fk.widgets.LiveEntropy(tasks).update``).
    """
    import torch
    from tqdm.auto import tqdm

    from ...core.runtime import quiet_transformers
    from ...models.experts import check_experts
    from ...models.heads import base_state, head_policy
    from ..registry import get_method
    from ..zoo_merge import merge_experts

    opts = get_method("adamerging").resolve(dict(granularity=granularity, steps=steps, lr=lr, init=init,
                                                 batch_size=batch_size, seed=seed))
    pool = [zoo.expert(n) for n in experts] if experts else list(zoo.experts)
    if len(pool) < 2:
        raise MergeError(f"AdaMerging merges at least 2 experts, got {len(pool)}; fix: pass two or more")
    check_experts(pool)
    quiet_transformers()
    tasks = list(dict.fromkeys(e.task for e in pool))
    corpus = dev_texts(zoo, tasks, texts)
    states = [e.state_dict() for e in pool]
    policy = head_policy(pool, states=states)
    names = policy.float_names(states[0])
    base = base_state(zoo.base, pool[0].recipe["labels"], seed)
    base = {n: base[n].float() for n in names}
    taus = {n: torch.stack([s[n].float() - base[n] for s in states]) for n in names}
    del states
    shape = (len(pool),) if granularity == "task" else (len(pool), len(names))
    lam = torch.nn.Parameter(torch.full(shape, float(init)))
    optimiser = torch.optim.Adam([lam], lr=lr)

    model, tokenizer = pool[0].load()
    model.eval().requires_grad_(False)  # dropout off: the entropy of the model that will be served
    max_length = zoo.profile.max_length
    encoded = {t: tokenizer(v, truncation=True, max_length=max_length) for t, v in corpus.items()}
    heads = {t: {k.split(".", 1)[1]: v.float() for k, v in h.items()} for t, h in (policy.heads or {}).items()}
    features: dict = {}
    hook = None
    if not policy.fused_heads:
        (prefix,) = pool[0].head_prefixes
        head_module = model.get_submodule(prefix)
        hook = head_module.register_forward_pre_hook(lambda module, args: features.__setitem__("x", args[0]))
    gen = torch.Generator().manual_seed(seed)
    orders = {t: [] for t in tasks}
    trace, t0 = [], time.perf_counter()
    try:
        for step in tqdm(range(1, steps + 1), desc="AdaMerging", disable=quiet, leave=False):
            rows, sizes = [], []
            for t in tasks:  # seeded passes over each task's texts
                if len(orders[t]) < batch_size:
                    orders[t] += torch.randperm(len(corpus[t]), generator=gen).tolist()
                idx, orders[t] = orders[t][:batch_size], orders[t][batch_size:]
                rows += [{k: encoded[t][k][i] for k in encoded[t].keys()} for i in idx]
                sizes.append(len(idx))
            batch = tokenizer.pad(rows, return_tensors="pt")
            params = combine(base, taus, lam, names)
            out = torch.func.functional_call(model, params, args=(), kwargs=dict(batch), strict=False)
            x = features.get("x")  # read once: each head call below runs the hook again, on its slice
            per_task, start = {}, 0
            for t, size in zip(tasks, sizes):
                if policy.fused_heads:
                    logits = out.logits[start:start + size]
                    if logits.dim() == 3:  # a causal LM: the next-token distributions at the real tokens
                        logits = logits[batch["attention_mask"][start:start + size].bool()]
                else:
                    logits = torch.func.functional_call(head_module, heads[t], (x[start:start + size],))
                per_task[t] = entropy(logits)
                start += size
            loss = sum(per_task.values())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                lam.clamp_(0.0, 1.0)
            trace.append({"step": step, "entropy": round(loss.item(), 5),
                          "per_task": {t: round(h.item(), 5) for t, h in per_task.items()},
                          "seconds": round(time.perf_counter() - t0, 2)})
            if callback is not None:
                callback(trace[-1])
    finally:
        if hook is not None:
            hook.remove()
    learned = lam.detach().double()
    weights = (learned.tolist() if granularity == "task"
               else {n: learned[:, j].tolist() for j, n in enumerate(names)})
    merged = merge_experts("task_arithmetic", pool, zoo.train_tasks, base=zoo.base, seed=seed, weights=weights,
                           lam=1.0)
    merged.method = "adamerging"
    mean = learned.mean(dim=tuple(range(1, learned.dim()))) if learned.dim() > 1 else learned
    merged.options = {**opts, "lambda_mean": {e.name: round(float(v), 4) for e, v in zip(pool, mean)},
                      "texts": {t: len(v) for t, v in corpus.items()}}
    merged.seconds = round(time.perf_counter() - t0, 2)
    return merged, trace
