"""The data-dependent statistics some merges need, measured once per expert and cached beside it.

* **Gram matrices** (RegMean, Jin et al. 2023): for every ``nn.Linear`` with input x, the running *mean* of
  xxᵀ over the real tokens the layer saw on the expert's own data. Padding positions are masked with the
  attention mask (the reference implementation includes them); the mean rather than the sum keeps experts
  with more data from dominating; the budget counts *examples*, not batches.
* **Diagonal Fisher** (Matena & Raffel 2022): F = E_x E_y [(∂ log p(y|x)/∂θ)²], estimated from
  *per-example* gradients (squaring a batch-mean gradient, as the reference does, underestimates it).
  The label y is ``"sample"``d from the model (the true Fisher), its ``"argmax"``, or the ``"gold"``
  label (the "empirical" Fisher). For a causal LM an example is a text and log p(y|x) is the mean over its
  positions of log p(yₜ | x<ₜ) (the LM loss of one text; the mean keeps long texts from dominating), each yₜ
  sampled from the model's next-token distribution, its argmax, or the text's own next token ("gold").

Statistics are saved as safetensors under ``cache/stats/<expert id>/`` named by a hash of what was measured and of
this module's code (:func:`~fusionkit.core.versioning.code_version`), so changed measuring code measures again.
They are obtained through :func:`~fusionkit.core.artefacts.obtain`: a damaged file is measured again, two processes
measure once, and the file is fsynced before it is renamed into place.
"""
from __future__ import annotations

import inspect

import torch
from safetensors.torch import load_file, save_file

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, stable_hash
from ..core.errors import MergeError
from ..core.runtime import pick_device
from ..core.versioning import code_version
from ..data.tasks import Task
from ..models.lm_evaluator import is_causal
from .methods.fisher import VARIANTS as FISHER_VARIANTS


def _examples(task: Task, examples: int, seed: int, split: str = "train"):
    ds = task.data[split]
    if examples < 1:
        raise MergeError(f"examples must be >= 1, got {examples}")
    return ds.shuffle(seed=seed).select(range(min(examples, len(ds))))


@torch.no_grad()
def gram_stats(model, tokenizer, task: Task, examples: int = 256, max_length: int = 128, batch_size: int = 32,
               seed: int = 0, device="auto", modules=None) -> dict[str, torch.Tensor]:
    """``{linear module name: mean xxᵀ}`` over non-padding tokens of ``examples`` training examples; ``modules``
    (a set of names) measures only those layers (RegMean++ needs one block's at a time)."""
    device = pick_device(device)
    model = model.to(device).eval()
    sums, counts, mask = {}, {}, {}
    hooks = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach()
            if x.dim() == 3:  # [batch, tokens, features]: keep real tokens only
                x = x[mask["m"].bool()] if x.shape[:2] == mask["m"].shape else x.reshape(-1, x.shape[-1])
            x = x.reshape(-1, x.shape[-1]).float()
            # one batch's xᵀx in float32 (a BLAS product, ~4x faster than float64 on CPU), batches summed in float64
            sums[name] = sums.get(name, 0) + (x.T @ x).double()
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (modules is None or name in modules):
            hooks.append(module.register_forward_pre_hook(hook(name)))
    try:
        data = _examples(task, examples, seed)
        for start in range(0, len(data), batch_size):
            texts = data[start:start + batch_size]["text"]
            batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            mask["m"] = batch["attention_mask"]
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name]).float().cpu() for name in sums}


def fisher_stats(model, tokenizer, task: Task, examples: int = 128, variant: str = "sample", max_length: int = 128,
                 seed: int = 0, device="auto") -> dict[str, torch.Tensor]:
    """``{parameter name: mean over examples of (∂ log p(y|x) / ∂θ)²}``, one example per backward pass."""
    if variant not in FISHER_VARIANTS:
        raise MergeError(f"unknown Fisher variant {variant!r}; fix: use one of {FISHER_VARIANTS}")
    device = pick_device(device)
    model = model.to(device).eval()  # no dropout: the Fisher of the deterministic model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # float32 sums of at most a few thousand non-negative terms (relative error ~1e-7 per term), added by one fused
    # kernel per example: the float64 conversion and per-tensor squaring cost 40% of the measurement on 2 CPU cores
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    data = _examples(task, examples, seed)
    causal = is_causal(model)
    for row in data:
        batch = tokenizer(row["text"], truncation=True, max_length=max_length, return_tensors="pt").to(device)
        if causal and batch["input_ids"].shape[1] < 2:
            continue  # nothing to predict: the example adds no gradient (still counted, as for a classifier)
        logits = model(**batch).logits[0].float()
        log_probs = torch.log_softmax(logits[:-1] if causal else logits, -1)  # an LM predicts positions 1..T-1
        if variant == "sample":
            y = torch.multinomial(log_probs.detach().exp().cpu().reshape(-1, log_probs.shape[-1]), 1,
                                  generator=gen)[:, 0].reshape(log_probs.shape[:-1])
        elif variant == "argmax":
            y = log_probs.detach().argmax(-1)
        else:
            y = batch["input_ids"][0, 1:] if causal else torch.tensor(int(row["label"]))
        y = y.to(log_probs.device)
        model.zero_grad(set_to_none=True)
        (log_probs.gather(-1, y[:, None]).mean() if causal else log_probs[y]).backward()
        got = [n for n, p in params.items() if p.grad is not None]
        grads = [params[n].grad.detach().float() for n in got]
        torch._foreach_addcmul_([fisher[n] for n in got], grads, grads)
    model.zero_grad(set_to_none=True)
    return {n: (f / len(data)).cpu() for n, f in fisher.items()}


MEASURES = {"gram": gram_stats, "fisher": fisher_stats}


# each measure's options, read once from its signature (the rule stays put if a test wraps the function); a cached
# or published measurement is of every layer, so ``modules`` (a partial measurement) is not one of them
_OPTIONS = {kind: {n: p for n, p in inspect.signature(fn).parameters.items() if n != "modules"}
            for kind, fn in MEASURES.items()}


def _defaults(kind: str) -> dict:
    """The measure's own defaults, e.g. ``{"examples": 256, "max_length": 128, "seed": 0, ...}``."""
    return {n: p.default for n, p in _OPTIONS[kind].items() if p.default is not inspect.Parameter.empty}


def expert_stats(expert, kind: str, task: Task, **options) -> dict[str, torch.Tensor]:
    """Measure ``kind`` ("gram" or "fisher") for an :class:`~fusionkit.models.experts.Expert` on ``task``; cached."""
    if kind not in MEASURES:
        raise MergeError(f"unknown statistics {kind!r}; fix: use one of {sorted(MEASURES)}")
    unknown = set(options) - set(_OPTIONS[kind])
    if unknown:
        raise MergeError(f"{kind} statistics have no option(s) {sorted(unknown)}; fix: use "
                         f"{sorted(_defaults(kind))}")
    # the key holds every setting, defaults filled in: an option spelled out or left at its default is one artefact
    settings = {**_defaults(kind), **options}
    settings.pop("device", None)  # where it ran does not change what was measured
    key = stable_hash({"kind": kind, "task": task.fingerprint(), "code": code_version(__name__), **settings})
    shown = ", ".join(f"{k} {v}" for k, v in sorted(options.items()))
    art = Artefact(cache_dir("stats", expert.id) / f"{kind}-{key}.safetensors", False,
                   f"{kind} statistics of expert {expert.name}",
                   f"{kind} of expert {expert.name} ({expert.id}) on {task.name}" + (f", {shown}" if shown else ""))

    def measure(tmp):
        model, tokenizer = expert.load()
        stats = MEASURES[kind](model, tokenizer, task, **options)
        save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp))
        return stats

    return obtain(art, lambda path: load_file(path), measure)
