"""Statistics as files a model's author can publish: RegMean's Gram matrices or a diagonal Fisher, measured once on
the author's data, merged by anyone without it (``fusionkit stats gram|fisher --model PATH --data CSV --out F``).

The format is one safetensors file:

* tensors: Gram matrices keyed by the ``nn.Linear`` module's name (``bert.encoder.layer.0.attention.self.query``),
  each the *mean* of xxᵀ over the non-padding tokens of the examples (float32, [in, in]); or Fisher tensors keyed
  by parameter name, each the mean over examples of the squared per-example gradient of log p(y|x);
* metadata (strings): ``fusionkit_stats`` (format version), ``kind`` (gram | fisher), ``model_sha256`` (sha256 of
  each weight file of the model measured, comma-joined - a merge refuses statistics of another model), ``examples``
  (how many examples), ``max_length``, ``seed``, ``variant`` (fisher: sample | argmax | gold), ``masking``
  (gram: "non-padding tokens, attention mask"), ``data`` (the data file's name and sha256) and the kit version.

A merge given these files (``merge_checkpoints(..., stats_files=[...])``, ``fusionkit merge regmean --models A B
--stats A.safetensors B.safetensors``) uses them as it would statistics it measured itself: the same numbers give
the same merge.
"""
from __future__ import annotations

import json
from pathlib import Path

from .._version import __version__
from ..core.cache import atomic_file, sha256_file
from ..core.errors import MergeError

FORMAT = "1"


def model_hash(checkpoint) -> str:
    return ",".join(sha256_file(p) for p in checkpoint.weight_files)


def save_stats(path: str | Path, kind: str, stats: dict, checkpoint, data: str | Path, **settings) -> Path:
    """Write ``stats`` of ``checkpoint`` (a :class:`~fusionkit.models.checkpoints.Checkpoint`) with its metadata,
    atomically; ``path`` must not be one of the model's own files."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.resolve().parent == checkpoint.path.resolve():
        raise MergeError(f"--out {path} is inside the model folder {checkpoint.path}; fix: write statistics beside it")
    meta = {"fusionkit_stats": FORMAT, "kind": kind, "model_sha256": model_hash(checkpoint),
            "model": str(checkpoint.recipe.get("source", checkpoint.path)),
            "data": json.dumps({"file": Path(data).name, "sha256": sha256_file(data)}), "fusionkit": __version__,
            **({"masking": "non-padding tokens (attention mask); mean over tokens"} if kind == "gram" else {}),
            **{k: str(v) for k, v in settings.items()}}
    with atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp), metadata=meta)
    return path


def load_stats(path: str | Path, kind: str, checkpoint=None) -> tuple[dict, dict]:
    """``(stats, metadata)`` of a statistics file; refuses another kind, or (with ``checkpoint``) another model."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MergeError(f"{path}: no such statistics file; fix: write it with fusionkit stats {kind} --model ... "
                         "--data ... --out FILE")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("fusionkit_stats") != FORMAT:
            raise MergeError(f"{path} is not a fusionkit statistics file (format {FORMAT}); fix: write it with "
                             f"fusionkit stats {kind}")
        if meta.get("kind") != kind:
            raise MergeError(f"{path} holds {meta.get('kind')} statistics, the method needs {kind}; fix: pass "
                             f"files written by fusionkit stats {kind}")
        stats = {k: f.get_tensor(k) for k in f.keys()}
    if checkpoint is not None and meta.get("model_sha256") != model_hash(checkpoint):
        raise MergeError(f"{path} was measured on {meta.get('model')}, not on {checkpoint.name} (the weights' sha256 "
                         "differ); fix: pass each model's own statistics, in the order of --models")
    return stats, meta


def measure_to_file(kind: str, model, data: str | Path, out: str | Path, examples: int | None = None,
                    max_length: int = 128, seed: int = 0, variant: str = "sample") -> dict:
    """Measure ``kind`` statistics of a checkpoint folder (or hub id) on the training split of ``data`` (a classifier's
    CSV with text and label columns, a causal LM's text file: :func:`~fusionkit.models.checkpoints.checkpoint_task`)
    and write them to ``out``."""
    from ..models.checkpoints import Checkpoint, checkpoint_task, expert_from
    from .statistics import _defaults, expert_stats

    if kind not in ("gram", "fisher"):
        raise MergeError(f"unknown statistics {kind!r}; fix: gram (RegMean) or fisher")
    ck = model if isinstance(model, Checkpoint) else expert_from(model)
    task = checkpoint_task(ck, data)
    settings = {"max_length": max_length, "seed": seed, **({"variant": variant} if kind == "fisher" else {})}
    if examples is not None:
        settings["examples"] = examples
    stats = expert_stats(ck, kind, task, **settings)
    full = {**_defaults(kind), **settings}
    full.pop("device", None)
    examples_used = min(int(full["examples"]), len(task.data["train"]))
    save_stats(out, kind, stats, ck, data, **{**full, "examples": examples_used})
    return {"out": str(out), "kind": kind, "model": ck.name, "tensors": len(stats), "examples": examples_used}
