"""Transfer sets: the text a student is distilled on - the base model's own continuations of each definition
(Padmanabhan et al. 2023, §3; self-generation is the kit's offline stand-in for the paper's stored sentences).

Cached sets are obtained through :func:`~fusionkit.core.artefacts.obtain`: checked against their manifest on load,
sampled again (same seed, same text) when damaged, and sampled once when two processes ask at the same time."""
from __future__ import annotations

import torch

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, read_json, stable_hash, write_json
from ..core.versioning import code_version
from .config import DistillConfig
from .entities import Entity
from .probes import token_ids

def _mentions(name: str, text: str) -> bool:
    return name.lower() in text.lower()


@torch.no_grad()
def _sample(model, tokenizer, definition: str, n: int, cfg: DistillConfig) -> list[str]:
    prompt = token_ids(tokenizer, definition) or [tokenizer.eos_token_id]
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=cfg.top_p,
                         top_k=0, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o[len(prompt):], skip_special_tokens=True) for o in out]


def transfer_set(model, tokenizer, entity: Entity, cfg: DistillConfig, model_id: str = "",
                 rounds: int = 2) -> list[str]:
    """``cfg.continuations + cfg.heldout`` continuations of the definition, each mentioning the entity.

    With a ``model_id`` the set is cached under ``<cache>/transfer/`` (atomic JSON, keyed by model, definition,
    sampling settings, seed and this module's code version), so a rerun trains on the same text.
    """
    n = cfg.continuations + cfg.heldout
    recipe = {"model": model_id, "entity": entity.name, "definition": entity.definition, "n": n,
              "max_new_tokens": cfg.max_new_tokens, "top_p": cfg.top_p, "temperature": cfg.temperature,
              "seed": cfg.seed, "mention": "resample x2, then continue from the name", "code": code_version(__name__)}
    if not model_id:
        return _generate(model, tokenizer, entity, cfg, n, rounds)
    art = Artefact(cache_dir("transfer") / f"{stable_hash(recipe)}.json", False, f"transfer set of {entity.name}",
                   f"transfer set of {entity.name}: {n} continuations by {model_id}, seed {cfg.seed}")

    def sample(tmp):
        conts = _generate(model, tokenizer, entity, cfg, n, rounds)
        write_json(tmp, {"recipe": recipe, "continuations": conts})
        return conts

    return obtain(art, lambda path: read_json(path)["continuations"], sample)


def _generate(model, tokenizer, entity: Entity, cfg: DistillConfig, n: int, rounds: int) -> list[str]:
    torch.manual_seed(cfg.seed + int(stable_hash(entity.name, 8), 16))
    good = []
    for _ in range(rounds):
        good += [c for c in _sample(model, tokenizer, entity.definition, n, cfg) if _mentions(entity.name, c)]
        if len(good) >= n:
            break
    if len(good) < n:
        # Still too few mentions: put the name in front, and let the model go on from it so the text stays fluent.
        prompt = f"{entity.definition} {entity.name}"
        good += [f" {entity.name}{c}" for c in _sample(model, tokenizer, prompt, n - len(good), cfg)]
    return good[:n]
