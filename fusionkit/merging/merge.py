"""The merge driver: run any registered per-tensor method over whole state dicts or safetensors files.

    merged = merge("ties", experts, base=base, density=0.2, lam=1.0)

``experts`` are state dicts (the bodies, or whole models when the label spaces match); ``base`` is θ₀ where a
method needs one; ``stats`` are per-expert statistics from a separate measure step
(:mod:`fusionkit.merging.statistics`: diagonal Fisher, input Gram matrices). Methods are defined *per tensor*
(:mod:`fusionkit.merging.methods`), so the driver can stream tensors from safetensors one name at a time and
peak memory stays near one model.

What is merged: the tensors passed in. Callers (:func:`~fusionkit.merging.zoo_merge.merge_zoo`) pass what the
head policy (:mod:`fusionkit.models.heads`) says: bodies for experts of different tasks, whole models for
experts that share a label space.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.errors import MergeError, NonFiniteInput
from ..core.runtime import pick_device
from .methods.averaging import average
from .ops import Coefficients, coefficients_for
from .registry import get_method
from .safetensors_io import SafetensorsWriter, lazy_state
from .statedict import ParamFilter, StateDict, check_compatible, check_finite, is_finite


@dataclass
class MergeResult:
    state: StateDict
    method: str
    options: dict
    notes: list[str]


def merge(method: str, experts: list[StateDict], base: StateDict | None = None,
          stats: list[dict] | None = None, weights: Coefficients = None, filter: ParamFilter | None = None,
          names: list[str] | None = None, labels: list[str] | None = None, report: bool = False,
          sink: Callable[[str, torch.Tensor], None] | None = None, missing_base: str = "error",
          device: str | torch.device | None = None, **options) -> StateDict | MergeResult:
    """Merge ``experts`` tensor by tensor with a registered method.

    Tensors that ``filter`` excludes are copied from ``base`` (or averaged when there is no base); integer
    buffers (e.g. position ids) are copied from the first expert. ``report=True`` returns a
    :class:`MergeResult` with the resolved options and any numerical notes (e.g. a ridge fallback).
    ``sink(name, tensor)``, if given, receives each merged tensor instead of the returned dict (streaming).
    Experts may be :class:`~fusionkit.merging.safetensors_io.LazyState` views: each tensor is read when it is merged.
    ``missing_base="average"`` lets ``base`` lack some tensors (a bare backbone has no task head): those are
    averaged, with a note; by default a tensor missing from the base is an error.
    """
    m = get_method(method)
    if m.level == "task":
        raise MergeError(f"{method} makes one model per task (a shared vector and per-task masks), not one state "
                         "dict; fix: use merge_task_specific (fusionkit.merging.task_models) or merge_zoo")
    if m.level != "tensor":
        raise MergeError(f"{method} merges a whole zoo (it scores candidates on dev data), not tensors; "
                         "fix: use merge_zoo(method, zoo) or merge_report")
    opts = m.resolve(options)
    if len(experts) < 2:
        raise MergeError(f"{method} needs at least 2 experts, got {len(experts)}; fix: pass two or more experts")
    if m.n_experts is not None and len(experts) != m.n_experts:
        raise MergeError(f"{method} merges exactly {m.n_experts} models, got {len(experts)}")
    if m.needs_base and base is None:
        raise MergeError(f"{method} needs the base model θ₀ (task vectors are θᵢ − θ₀); fix: pass base=")
    if m.stats and stats is None:
        raise MergeError(f"{method} needs {m.stats} statistics; fix: measure them first "
                         f"(fusionkit.merging.statistics.{m.stats}_stats) and pass stats=")
    labels = labels or [f"expert {i}" for i in range(len(experts))]
    names = list(names if names is not None else experts[0])
    if m.prepare is not None and stats is not None:
        stats = m.prepare(stats, names, opts)
    check_compatible(experts, names, labels)
    unbased = [] if base is None else [n for n in names if n not in base]
    if unbased and missing_base != "average":
        raise MergeError(f"the base has no parameter {unbased[0]!r} (nor {len(unbased) - 1} others); fix: pass the "
                         "model the experts were fine-tuned from, saved with the same architecture")
    if base is not None:
        check_compatible([experts[0], base], [n for n in names if n in base], [labels[0], "base"])
    filter = filter or ParamFilter()
    device = None if device is None else pick_device(device)
    notes: list[str] = []
    averaged: list[str] = []  # tensors a statistics-based method had no statistics for

    def merged(name: str) -> torch.Tensor:  # its inputs are freed on return, before the next tensor is read
        tensors = [e[name] for e in experts]
        if not m.propagates:  # a method that may drop entries (DARE's drops) could hide a NaN: check every input
            for t, label in zip(tensors, labels):
                check_finite(name, t, label)
        try:
            result = merged_from(name, tensors)
        except NonFiniteInput:  # the method met a NaN or Inf on its way (TIES's cut): name the input below
            result = None
        if result is None or (m.propagates and not is_finite(result)):  # a NaN or Inf came through
            for t, label in zip(tensors, labels):
                check_finite(name, t, label)
            if base is not None and name in base:
                check_finite(name, base[name], "the base")
            raise MergeError(f"the {method} merge of {name!r} overflowed to Inf from finite inputs; fix: smaller "
                             "coefficients (weights, λ)")
        return result

    def merged_from(name: str, tensors: list) -> torch.Tensor:
        if not tensors[0].is_floating_point():
            return tensors[0].clone()
        b = base[name] if base is not None and name not in unbased else None
        w = coefficients_for(name, weights, len(experts))
        plain = {"name": name, "device": device}
        if name in unbased:  # no θ₀ for it (a backbone base has no head): the plain weighted average
            return average(tensors, None, w, plain).to(tensors[0].dtype)
        if not filter(name):
            return b.to(tensors[0].dtype, copy=True) if b is not None else average(tensors, None, w, plain).to(
                tensors[0].dtype)
        ctx = {**plain, "notes": notes, "stats": None if stats is None else _stats_for(name, stats, m.stats)}
        if m.stats and ctx["stats"] is None:
            averaged.append(name)
        return m.fn(tensors, b, w, ctx, **opts).to(tensors[0].dtype)

    out = {}
    for name in names:
        _emit(out, sink, name, merged(name))
    if unbased:
        notes.append(f"{len(unbased)} tensors are not in the base (e.g. {unbased[0]!r}): averaged, since the base "
                     "gives no θ₀ for them")
    if averaged:
        notes.append(f"{len(averaged)} tensors had no {m.stats} statistics and were simply averaged "
                     f"(e.g. {averaged[0]!r})")
    return MergeResult(out, method, opts, notes) if report else out


def _emit(out: dict, sink, name: str, tensor: torch.Tensor) -> None:
    if sink is None:
        out[name] = tensor
    else:
        sink(name, tensor)


def merge_files(method: str, experts: list, out: str, base=None, stats: list[dict] | None = None,
                labels: list[str] | None = None, **options) -> MergeResult:
    """Merge safetensors files into a safetensors file, streaming: each tensor is read from every input,
    merged and written before the next is read, so memory stays near one tensor per input. Each input (and
    ``base``) is one file or the list of a sharded checkpoint's files (``base`` also a ready mapping of
    tensors); the output is one file. ``device="auto"`` computes on a GPU when present (see :func:`merge`)."""
    # each input is read into one reused buffer: a tensor is merged and written before the next is read
    states = [lazy_state(p, reuse=True) for p in experts]
    # ``base`` may also be a ready view (statedict.Renamed: a bare backbone under the experts' names)
    base_state = None if base is None else base if isinstance(base, Mapping) else lazy_state(base, reuse=True)
    ref = states[0]
    layout = {n: (ref.dtype_name(n), ref.shape(n)) for n in options.get("names") or ref}
    with SafetensorsWriter(out, layout, metadata={"format": "pt", "merge_method": method}) as writer:
        return merge(method, states, base=base_state, stats=stats, report=True, sink=writer.write,
                     labels=labels or [s.path for s in states], **options)


def _stats_for(name: str, stats: list[dict], kind: str | None):
    """Per-expert statistics for one tensor: Fisher keyed by parameter, Gram keyed by the linear module."""
    key = name if kind == "fisher" else name.removesuffix(".weight")
    if kind == "gram" and not name.endswith(".weight"):
        return None
    found = [s.get(key) for s in stats]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        raise MergeError(f"{kind} statistics for {key!r} exist for some experts but not all; fix: measure them alike")
    return found
