"""Experts: a base model fine-tuned on a task, stored once under a hash of the recipe that made it.

An :class:`Expert` is a ``save_pretrained`` folder in the cache (safetensors, config with label names, tokenizer)
plus ``recipe.json`` - base, task and its data fingerprint, hyperparameters, seed, the expert it started from,
the version of the training code, its scores and package versions - and the ``.manifest.json`` every cached
artefact has (:mod:`fusionkit.core.manifest`). :mod:`fusionkit.models.training` makes them; reading one whose files
were damaged after it was found moves it aside and says so in one line, and the next request trains it again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.artefacts import Artefact, guard, lookup
from ..core.cache import cache_dir, read_json, sha256_file, stable_hash
from ..core.errors import MergeError
from ..core.runtime import pick_device
from ..data.assets import with_pad_token
from .heads import split_head


@dataclass
class Expert:
    """A fine-tuned model on disk. ``state_dict()`` reads its safetensors; ``load()`` builds the model."""

    name: str
    path: Path
    recipe: dict

    @property
    def task(self) -> str:
        return self.recipe["task"]

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def scores(self) -> dict:
        return self.recipe.get("scores", {})

    @property
    def artefact(self) -> Artefact:
        return _artefact(self.path, self.name, self.recipe)

    def state_dict(self) -> dict:
        from safetensors.torch import load_file

        return guard(self.artefact, lambda path: load_file(path / "model.safetensors"))

    @property
    def kind(self) -> str:
        """``classifier`` (a sequence classifier) or ``causal`` (a language model: the ``causal`` zoo)."""
        return self.recipe.get("kind", "classifier")

    def load(self, device="cpu"):
        """``(model, tokenizer)`` as plain transformers objects."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        auto = AutoModelForCausalLM if self.kind == "causal" else AutoModelForSequenceClassification
        model = guard(self.artefact, auto.from_pretrained).to(pick_device(device))
        return model, with_pad_token(AutoTokenizer.from_pretrained(self.path))

    @property
    def head_prefixes(self) -> tuple[str, ...]:
        """The top-level modules that form this expert's task head (:func:`fusionkit.models.heads.head_prefixes`)."""
        return tuple(self.recipe["head_prefixes"])

    def body_and_head(self) -> tuple[dict, dict]:
        return split_head(self.state_dict(), self.head_prefixes)

    def __repr__(self) -> str:
        return f"Expert({self.name!r}, task={self.task!r}, id={self.id}, scores={self.scores})"


def expert_path(recipe: dict) -> Path:
    """Where the expert a recipe makes lives in the cache."""
    return cache_dir("experts") / stable_hash(recipe)


def expert_summary(name: str, recipe: dict) -> str:
    """An expert's recipe in a line, for ``fusionkit cache list``."""
    t = recipe.get("train", {})
    start = f" from expert {recipe['init']}" if recipe.get("init") else ""
    start += "".join(f", {k} {recipe[k]}" for k in ("reinit", "permute") if recipe.get(k) is not None)
    return (f"{name}: {recipe.get('task')} on {recipe.get('base')}{start}, seed {recipe.get('seed')}, "
            f"{t.get('epochs')} epochs, lr {t.get('lr')}, max_length {t.get('max_length')}")


def _artefact(path: Path, name: str, recipe: dict) -> Artefact:
    return Artefact(path, True, f"expert {name}", expert_summary(name, recipe))


def expert_artefact(recipe: dict, name: str) -> Artefact:
    """The cache artefact the expert ``recipe`` makes (see :func:`~fusionkit.core.artefacts.obtain`)."""
    return _artefact(expert_path(recipe), name, recipe)


def load_expert(name: str):
    """A loader for :func:`~fusionkit.core.artefacts.obtain`: the expert in a finished folder."""
    return lambda path: Expert(name, path, read_json(path / "recipe.json"))


def find_expert(recipe: dict, name: str) -> Expert | None:
    """The cached expert made by ``recipe`` (named ``name``) if it is there and whole, or None."""
    return lookup(expert_artefact(recipe, name), load_expert(name))


# What to do instead of a weight-space merge when the models do not share a base or a vocabulary.
NO_MERGE = ("models of different architectures or vocabularies cannot be merged in weight space; fuse them with "
            "Cool-Fusion (fusionkit.distill.cool_fusion, no training) or distil one into the other through token "
            "alignment (fusionkit.distill.token_alignment)")


def check_experts(experts: list[Expert]) -> None:
    """Experts can be fused only if there are at least two, from one base, with one tokenizer."""
    if len(experts) < 2:
        raise MergeError(f"merging needs at least 2 experts, got {len(experts)}")
    bases = {e.recipe["base"] for e in experts}
    if len(bases) > 1:
        raise MergeError(f"experts come from different bases {sorted(bases)}; fix: merge experts of one base - "
                         f"{NO_MERGE}")
    tokenizers = {}
    for e in experts:
        tokenizers.setdefault(tokenizer_fingerprint(e.path), e.name)
    if len(tokenizers) > 1:
        a, b = list(tokenizers.values())[:2]
        raise MergeError(f"experts {a!r} and {b!r} use different tokenizers, so their embeddings mean different "
                         f"things; fix: merge experts fine-tuned from one base with its tokenizer - {NO_MERGE}")


VOCAB_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def tokenizer_fingerprint(folder: Path) -> str | None:
    """What makes two tokenizers the same for merging: the vocabulary and merges (``tokenizer.json``'s ``model``
    and added tokens, or the vocabulary files), not the truncation or padding settings a training script saved."""
    fast = folder / "tokenizer.json"
    if fast.is_file():
        spec = read_json(fast)
        return stable_hash({"model": spec.get("model"), "added": spec.get("added_tokens")})
    files = [folder / f for f in VOCAB_FILES if (folder / f).is_file()]
    return stable_hash([sha256_file(f) for f in files]) if files else None
