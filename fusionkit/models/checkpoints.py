"""A researcher's own checkpoints as experts: any ``save_pretrained`` folder, or a hub id for online users.

    expert = fk.expert_from("runs/sst2-finetuned")            # a sequence classifier or a causal LM

The kit's own experts live in its cache under a recipe; a checkpoint of yours lives where you put it, so
:class:`Checkpoint` reads it as it is - safetensors only (no pickle), single-file or sharded
(``model.safetensors.index.json``) - and never moves, rewrites or "repairs" it. It carries what merging, search
and landscapes read from an expert: the kind (``classifier`` or ``causal``), the label names (a classifier's
``config.id2label``), the head prefixes (the top-level modules outside ``model.base_model``, found on a
meta-device copy, so nothing is allocated) and a *base* string naming the architecture, so that two checkpoints
of one architecture pass :func:`~fusionkit.models.experts.check_experts` and the tensor check then names the
first mismatch. A causal LM's head is its language-model head over one shared vocabulary: it is merged with the
body (there is no label space to keep apart).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.cache import stable_hash
from ..core.errors import MergeError
from ..core.runtime import pick_device
from ..data.assets import with_pad_token
from .experts import Expert

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "tf_model.h5")
KINDS = {"ForSequenceClassification": "classifier", "ForCausalLM": "causal", "LMHeadModel": "causal"}


@dataclass(repr=False)
class Checkpoint(Expert):
    """An expert made outside the kit: a folder read in place. ``recipe`` holds ``kind``, ``task``, ``labels``,
    ``head_prefixes``, ``base`` and ``source`` (the path or hub id given)."""

    @property
    def id(self) -> str:
        # Folder names repeat ("checkpoint-500"); statistics cached per expert must not collide: name it by the
        # weight files' path, size and modification time (a rewritten checkpoint gets a new id).
        files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.weight_files]
        return f"own-{stable_hash(files, 12)}"

    @property
    def weight_files(self) -> list[Path]:
        """The safetensors file(s) holding the weights, in shard order."""
        if (self.path / WEIGHTS).is_file():
            return [self.path / WEIGHTS]
        shards = sorted(set(json.loads((self.path / INDEX).read_text())["weight_map"].values()))
        return [self.path / s for s in shards]

    def state_dict(self) -> dict:
        from safetensors.torch import load_file

        state = {}
        for f in self.weight_files:
            state.update(load_file(f))
        return state

    def load(self, device="cpu"):
        """``(model, tokenizer)`` as plain transformers objects."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        auto = AutoModelForCausalLM if self.kind == "causal" else AutoModelForSequenceClassification
        model = auto.from_pretrained(self.path).to(pick_device(device))
        return model, with_pad_token(AutoTokenizer.from_pretrained(self.path))

    def __repr__(self) -> str:
        return f"Checkpoint({self.name!r}, kind={self.kind!r}, task={self.task!r}, path={str(self.path)!r})"


def expert_from(source: str | Path, task=None, name: str | None = None) -> Checkpoint:
    """Wrap a ``save_pretrained`` folder (or a hub id, downloaded once into the Hugging Face cache) as an expert.

    ``task`` (a :class:`~fusionkit.data.tasks.Task` or a name) names what it was fine-tuned for; by default the
    config's ``finetuning_task`` or the folder name. Raises one line naming the fix for a folder without
    safetensors weights, a pickle-only checkpoint, an architecture that is neither a sequence classifier nor a
    causal LM, and a hub id while offline.
    """
    path = _local_folder(str(source))
    _check_weights(path)
    config = json.loads((path / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    kind = next((k for suffix, k in KINDS.items() if arch.endswith(suffix)), None)
    if kind is None:
        raise MergeError(f"{source}: architecture {arch or '(none in config.json)'!r} is neither a sequence "
                         "classifier nor a causal LM; fix: save the model with its task head "
                         "(AutoModelForSequenceClassification or AutoModelForCausalLM .save_pretrained)")
    labels = None
    if kind == "classifier":
        id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    task_name = getattr(task, "name", task) or config.get("finetuning_task") or path.name
    recipe = {
        "kind": kind, "task": task_name, "labels": labels, "head_prefixes": list(_head_prefixes(path, kind)),
        # "base" is what check_experts compares: the architecture and its size, not a training history
        "base": f"{arch} ({config.get('model_type')}, vocab {config.get('vocab_size')}, "
                f"hidden {config.get('hidden_size', config.get('n_embd'))})",
        "source": str(source), "scores": {},
    }
    return Checkpoint(name or path.name, path, recipe)


def check_data_format(checkpoint: Checkpoint, data: str | Path) -> Path:
    """A classifier takes a CSV with text and label columns, a causal LM a text file (one text per line)."""
    from ..core.errors import TaskError

    path = Path(data)
    if checkpoint.kind == "classifier" and path.suffix.lower() != ".csv":
        raise TaskError(f"{data}: a classifier's data is a CSV with text and label columns; fix: pass a .csv")
    if checkpoint.kind == "causal" and path.suffix.lower() == ".csv":
        raise TaskError(f"{data}: a causal LM's data is plain text, one text per line; fix: pass a .txt file")
    if checkpoint.kind not in ("classifier", "causal"):
        raise MergeError(f"{checkpoint.name} is a {checkpoint.kind}, which has no data format; fix: pass a sequence "
                         "classifier or a causal LM")
    return path


def checkpoint_task(checkpoint: Checkpoint, data: str | Path):
    """A checkpoint's data file as a task, split train/validation/test (10% each held out, seeded): a classifier's
    CSV (labels named as in its ``id2label``), a causal LM's text file (:func:`check_data_format`). The one rule
    for what data a checkpoint takes (merge scores, statistics)."""
    path = check_data_format(checkpoint, data)
    if checkpoint.kind == "classifier":
        from ..data.tasks import task_from

        return task_from(path, name=path.stem, label_names=checkpoint.recipe["labels"])
    from ..data.domains import text_task_from

    return text_task_from(path, name=path.stem)


def base_from(source: str | Path, like: Checkpoint, name: str | None = None) -> Checkpoint:
    """θ₀ for merging checkpoints like ``like``: a checkpoint of the same architecture (:func:`expert_from`), or the
    bare pretrained backbone they were fine-tuned from (e.g. ``BertModel``, saved without a task head - what a hub
    base usually is). A backbone must match the experts' model type, vocabulary and width; its ``kind`` is
    ``"backbone"`` and it has no head: the merge then takes θ₀ from it for the body and averages the heads."""
    path = _local_folder(str(source))
    config = json.loads((path / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    if any(arch.endswith(suffix) for suffix in KINDS):
        return expert_from(path, name=name)
    _check_weights(path)
    theirs = json.loads((like.path / "config.json").read_text())
    for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
        if config.get(key) != theirs.get(key):
            raise MergeError(f"base {source}: {key} is {config.get(key)!r} but {like.name}'s is {theirs.get(key)!r}; "
                             f"fix: pass the model {like.name} was fine-tuned from")
    recipe = {"kind": "backbone", "task": None, "labels": None, "head_prefixes": [], "base": like.recipe["base"],
              "source": str(source), "scores": {}}
    return Checkpoint(name or path.name, path, recipe)


def _local_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MergeError(f"{source} has no config.json, so it is not a save_pretrained folder; fix: save the "
                             "model with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise MergeError(f"{source} is not a folder (nor an owner/name hub id); fix: pass the folder that "
                         "model.save_pretrained wrote")
    return _hub_snapshot(source)


def _hub_snapshot(repo_id: str) -> Path:
    """A hub model's config, safetensors and tokenizer files, from the local HF cache or (online) the hub."""
    from huggingface_hub import snapshot_download

    from ..data.assets import hub_reachable

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=not hub_reachable()))
    except Exception as err:  # huggingface_hub raises several types for "not there"; all mean the same here
        raise MergeError(f"{repo_id}: not a local folder, and the hub model could not be had "
                         f"({type(err).__name__}); fix: go online once so it is cached, or pass a local "
                         "save_pretrained folder") from None


def _check_weights(path: Path) -> None:
    if (path / WEIGHTS).is_file() or (path / INDEX).is_file():
        return
    pickled = [p for p in PICKLES if (path / p).exists()]
    if pickled:
        raise MergeError(f"{path} holds its weights only as {pickled[0]} (a pickle, which can run code when "
                         "loaded); fix: load it once where you trust it and re-save with "
                         "model.save_pretrained(folder, safe_serialization=True)")
    raise MergeError(f"{path} has no {WEIGHTS} (nor {INDEX}); fix: save the weights there with "
                     "model.save_pretrained(folder)")


def _head_prefixes(path: Path, kind: str) -> tuple[str, ...]:
    """A classifier's head modules, found on a meta-device copy (no memory); a causal LM has none to keep apart."""
    if kind == "causal":
        return ()
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .heads import head_prefixes

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path))
    return head_prefixes(model)
