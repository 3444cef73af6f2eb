"""Transfer sets: the text a student is distilled on - the base model's own continuations of each definition
(Padmanabhan et al. 2023, §3; self-generation is the kit's offline stand-in for the paper's stored sentences).

Two generators (``cfg.transfer``): ``"sample"`` continues the definition as plain text; ``"chat"`` asks an instruct
model through its chat template for a sentence that uses the definition (the reference's GPT-generated sets
restate the key attribute in most sentences; plain continuations of a 135M model often wander off).
:func:`quality` measures which one restates the definition: the share of sentences that contain a probe's answer.

Cached sets are obtained through :func:`~fusionkit.core.artefacts.obtain`: checked against their manifest on load,
sampled again (same seed, same text) when damaged, and sampled once when two processes ask at the same time."""
from __future__ import annotations

from dataclasses import replace

import torch

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, read_json, stable_hash, write_json
from ..core.versioning import code_version
from ..core.errors import DistillError
from .config import DistillConfig
from .entities import Entity
from .probes import token_ids

def _mentions(name: str, text: str) -> bool:
    return name.lower() in text.lower()


ASK = "{definition}\n\nWrite one new sentence about {name} that uses this information."
GENERATORS = ("sample", "chat")


def _prompt(tokenizer, text: str, cfg: DistillConfig, name: str) -> list[int]:
    if cfg.transfer == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DistillError("transfer='chat' needs a tokenizer with a chat template (an instruct model); "
                               "fix: use transfer='sample'")
        msgs = [{"role": "user", "content": ASK.format(definition=text, name=name)}]
        return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return token_ids(tokenizer, text) or [tokenizer.eos_token_id]


def quality(entity: Entity, continuations: list[str]) -> dict:
    """How much of the definition a transfer set restates: per probe type, the share of continuations that
    contain that type's gold answers (case-insensitive), and the share that mention the entity."""
    text = [c.lower() for c in continuations]
    out = {"mentions": sum(_mentions(entity.name, c) for c in continuations) / max(len(text), 1)}
    for kind in ("explicit", "implicit"):
        golds = [p.gold.lower() for p in entity.probes if p.probe_type == kind and p.gold]
        out[kind] = None if not golds else sum(any(g in c for g in golds) for c in text) / max(len(text), 1)
    return out


@torch.no_grad()
def _sample(model, tokenizer, definition: str, n: int, cfg: DistillConfig, name: str = "") -> list[str]:
    prompt = _prompt(tokenizer, definition, cfg, name)
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
              "seed": cfg.seed, "mention": "resample x2, then continue from the name", "code": code_version(__name__),
              **({"transfer": cfg.transfer} if cfg.transfer != "sample" else {})}  # old caches stay valid
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
        good += [c for c in _sample(model, tokenizer, entity.definition, n, cfg, entity.name)
                 if _mentions(entity.name, c)]
        if len(good) >= n:
            break
    if len(good) < n:
        # Still too few mentions: put the name in front, and let the model go on from it so the text stays fluent.
        prompt = f"{entity.definition} {entity.name}"
        good += [f" {entity.name}{c}" for c in _sample(model, tokenizer, prompt, n - len(good),
                                                      replace(cfg, transfer="sample"))]
    return good[:n]
