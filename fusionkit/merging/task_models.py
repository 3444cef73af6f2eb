"""Task-specific merges: one shared task vector for every task plus a light part per task (EMR-merging, TALL masks).

A single merged model must serve every task at once; EMR-merging (Huang et al. 2024) and TALL masks (Wang et al.
2024) give that up for little: they keep one shared task vector τ and, per task t, a binary mask Mₜ (one bit per
parameter) and a scalar sₜ, and task t runs

    θₜ = θ₀ + sₜ · (Mₜ ⊙ τ).

What it costs (:meth:`TaskModels.storage`): θ₀ (public) and τ - one model - plus ⌈n/8⌉ bytes and one float per
task, against 4n bytes per task to keep every float32 expert: each extra task costs 1/32 of an expert. What it asks:
the caller must know which task an input belongs to, as with the experts themselves.

Methods are registered at level ``"task"`` (:mod:`fusionkit.merging.registry`): per tensor they return
:class:`TaskParts` - τ's slice, one mask per expert and, for a rescaled method, each expert's two terms of its
rescaler - and :func:`merge_task_specific` streams tensor by tensor, summing the rescaler terms over the whole model
(EMR's sₜ is a ratio of whole-model sums, so it is known only after the last tensor).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cache import atomic_file
from ..core.errors import MergeError
from ..core.lazy import lazy_import
from .ops import coefficients_for
from .registry import get_method

torch = lazy_import("torch")

FILE = "task_specific.safetensors"


@dataclass
class TaskParts:
    """A task-level method's result for one tensor: the shared task vector, each expert's boolean mask and (for
    rescaled methods) each expert's ``(numerator, denominator)`` of its rescaler, summed over tensors by the driver;
    ``scale_terms=None`` means sₜ = 1."""

    shared: "torch.Tensor"
    masks: list
    scale_terms: list[tuple[float, float]] | None = None


@dataclass
class TaskModels:
    """The result of a task-specific merge: τ (``shared``), one mask dict and one scale per expert (in the order of
    ``labels``), and the tensors passed through unmerged (``copied``: integer buffers, filtered-out tensors).
    ``state(i, base)`` is the i-th task's model θ₀ + sᵢ·(Mᵢ ⊙ τ)."""

    method: str
    options: dict
    labels: list[str]
    shared: dict
    masks: list[dict]
    scales: list[float]
    copied: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def index(self, label_or_index) -> int:
        if isinstance(label_or_index, int):
            return label_or_index
        if label_or_index not in self.labels:
            raise MergeError(f"no task model {label_or_index!r}; fix: use one of {self.labels}")
        return self.labels.index(label_or_index)

    def state(self, which, base: dict) -> dict:
        """Task ``which``'s model (a label or an index), in the dtype of θ₀."""
        i = self.index(which)
        out = dict(self.copied)
        for name, tau in self.shared.items():
            b = base[name]
            # in τ's dtype (float32 for float32 experts): one product and one sum per entry, then θ₀'s dtype
            out[name] = (b.to(tau.dtype) + (self.scales[i] * tau) * self.masks[i][name]).to(b.dtype)
        return out

    def density(self, which) -> float:
        """The fraction of τ's entries task ``which`` keeps."""
        m = self.masks[self.index(which)]
        return sum(int(v.sum()) for v in m.values()) / max(1, sum(v.numel() for v in m.values()))

    def storage(self, bytes_per_value: int = 4) -> dict:
        """Bytes to keep τ once and each task's packed mask and scale, next to keeping every expert."""
        n = sum(t.numel() for t in self.shared.values())
        shared = n * bytes_per_value
        per_task = sum(math.ceil(t.numel() / 8) for t in self.shared.values()) + 8
        k = len(self.labels)
        return {"parameters": n, "shared_bytes": shared, "per_task_bytes": per_task,
                "total_bytes": shared + k * per_task, "experts_bytes": k * shared,
                "per_task_fraction_of_expert": round(per_task / shared, 4) if shared else 0.0}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: τ in float32, each mask bit-packed (``numpy.packbits``), scales and shapes in the
        metadata; written atomically. :func:`load_task_models` reads it back."""
        import numpy as np
        from safetensors.torch import save_file

        tensors = {f"shared/{n}": t.float().contiguous() for n, t in self.shared.items()}
        for i, masks in enumerate(self.masks):
            for n, m in masks.items():
                tensors[f"mask/{i}/{n}"] = torch.from_numpy(np.packbits(m.reshape(-1).numpy()))
        tensors.update({f"copied/{n}": t.contiguous() for n, t in self.copied.items()})
        meta = {"method": self.method, "options": self.options, "labels": self.labels, "scales": self.scales,
                "notes": self.notes}
        path = Path(path)
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "task_models": json.dumps(meta, default=str)})
        return path


def load_task_models(path: str | Path) -> TaskModels:
    """Read a :meth:`TaskModels.save` file (τ as float32)."""
    import numpy as np
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("task_models", "null") or "null")
        if meta is None:
            raise MergeError(f"{path} holds no task-specific merge (no 'task_models' metadata); fix: pass a file "
                             "written by TaskModels.save or save_merged of an EMR / TALL merge")
        shared, copied = {}, {}
        masks = [{} for _ in meta["labels"]]
        for key in f.keys():
            kind, rest = key.split("/", 1)
            if kind == "shared":
                shared[rest] = f.get_tensor(key)
            elif kind == "copied":
                copied[rest] = f.get_tensor(key)
        for key in f.keys():
            if key.startswith("mask/"):
                _, i, name = key.split("/", 2)
                like = shared[name]
                bits = np.unpackbits(f.get_tensor(key).numpy(), count=like.numel())
                masks[int(i)][name] = torch.from_numpy(bits.astype(bool)).view(like.shape)
    return TaskModels(meta["method"], meta["options"], meta["labels"], shared, masks, meta["scales"], copied,
                      meta["notes"])


def merge_task_specific(method: str, experts: list[dict], base: dict, weights=None, filter=None,
                        names: list[str] | None = None, labels: list[str] | None = None, **options) -> TaskModels:
    """Run a task-level method tensor by tensor: τ, the masks and the rescalers of :class:`TaskModels`.

    Tensors ``filter`` excludes are copied from θ₀ (every task gets the base there), integer buffers from the
    first expert; θ₀ is required (task vectors are θᵢ − θ₀)."""
    from .statedict import ParamFilter, check_compatible, check_finite  # torch: not at import (``merge --list``)

    m = get_method(method)
    if m.level != "task":
        raise MergeError(f"{method} merges into one model; fix: use merge({method!r}, ...)")
    opts = m.resolve(options)
    if len(experts) < 2:
        raise MergeError(f"{method} needs at least 2 experts, got {len(experts)}; fix: pass two or more experts")
    if base is None:
        raise MergeError(f"{method} needs the base model θ₀ (task vectors are θᵢ − θ₀); fix: pass base=")
    labels = labels or [f"expert {i}" for i in range(len(experts))]
    names = list(names if names is not None else experts[0])
    check_compatible(experts + [base], names, labels + ["base"])
    filter = filter or ParamFilter()
    shared, copied, masks = {}, {}, [{} for _ in experts]
    num, den = [0.0] * len(experts), [0.0] * len(experts)
    rescaled = False
    for name in names:
        tensors = [e[name] for e in experts]
        for t, label in zip(tensors, labels):
            check_finite(name, t, label)
        if not tensors[0].is_floating_point():
            copied[name] = tensors[0].clone()
            continue
        if not filter(name):
            copied[name] = base[name].clone()
            continue
        ctx = {"name": name, "notes": []}
        parts = m.fn(tensors, base[name], coefficients_for(name, weights, len(experts)), ctx, **opts)
        shared[name] = parts.shared.to(tensors[0].dtype)
        for i, mask in enumerate(parts.masks):
            masks[i][name] = mask.to(torch.bool)
        if parts.scale_terms is not None:
            rescaled = True
            for i, (a, b) in enumerate(parts.scale_terms):
                num[i] += float(a)
                den[i] += float(b)
    notes: list[str] = []
    scales = [1.0] * len(experts)
    if rescaled:
        for i in range(len(experts)):
            if den[i] == 0:
                notes.append(f"{labels[i]}: its mask keeps no entry of the shared vector; its rescaler is set to 1")
            else:
                scales[i] = num[i] / den[i]
    return TaskModels(method, opts, labels, shared, masks, [round(s, 8) for s in scales], copied, notes)
