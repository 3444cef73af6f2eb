"""State-dict algebra: task vectors, parameter filters, flattening and compatibility checks.

Notation (Ilharco et al. 2023, *Editing Models with Task Arithmetic*): base weights θ₀, expert weights θᵢ,
task vector τᵢ = θᵢ − θ₀. Everything here works on plain ``{name: tensor}`` dicts so it applies equally to
a live model's ``state_dict()`` and to tensors read lazily from safetensors files
(:class:`~fusionkit.merging.safetensors_io.LazyState`).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..core.errors import MergeError
from .safetensors_io import LazyState

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ParamFilter:
    """Which parameters a method touches: names matching any ``include`` glob (all if empty) and no ``exclude``.

    >>> ParamFilter(exclude=("*embeddings*", "*LayerNorm*"))("bert.encoder.layer.0.attention.self.query.weight")
    True
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __call__(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    @classmethod
    def parse(cls, include: str | None = None, exclude: str | None = None) -> "ParamFilter":
        """From comma-separated globs, as given on the command line."""
        split = lambda s: tuple(p.strip() for p in s.split(",") if p.strip()) if s else ()
        return cls(split(include), split(exclude))


def task_vector(expert: StateDict, base: StateDict) -> StateDict:
    """τ = θ_expert − θ_base for every floating-point tensor they share."""
    return {k: expert[k] - base[k] for k in expert if k in base and expert[k].is_floating_point()}


def check_compatible(states: list[StateDict], names: list[str] | None = None, labels: list[str] | None = None) -> None:
    """Fail on the first parameter that is missing from, or shaped differently in, one of ``states``."""
    labels = labels or [f"model {i}" for i in range(len(states))]
    ref = states[0]
    for name in names if names is not None else ref:
        for state, label in zip(states, labels):
            if name not in state:
                raise MergeError(f"{label} has no parameter {name!r} (it has {len(state)} others); "
                                 "fix: merge models of the same architecture")
            if shape_of(state, name) != shape_of(ref, name):
                raise MergeError(f"parameter {name!r} has shape {shape_of(state, name)} in {label} but "
                                 f"{shape_of(ref, name)} in {labels[0]}; fix: merge models of the same architecture")


def is_finite(tensor: torch.Tensor) -> bool:
    # a finite sum means every entry is finite (NaN and ±Inf propagate); one reduction, no boolean copy of the tensor.
    # A sum that overflows from finite entries alone is checked entry by entry.
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(name: str, tensor: torch.Tensor, label: str = "input") -> None:
    if not is_finite(tensor):
        raise MergeError(f"{label} has NaN or Inf values in {name!r}; fix: check that model (a diverged fine-tune?)")


def flatten(state: StateDict, names: list[str]) -> torch.Tensor:
    """Concatenate the named tensors into one 1-D vector (the order of ``names``)."""
    return torch.cat([state[n].reshape(-1) for n in names])


def unflatten(vector: torch.Tensor, like: StateDict, names: list[str]) -> StateDict:
    """Inverse of :func:`flatten`: cut a vector back into tensors shaped like ``like``."""
    out, offset = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vector[offset:offset + size].view_as(like[n])
        offset += size
    if offset != vector.numel():
        raise MergeError(f"vector has {vector.numel()} entries but the parameters need {offset}")
    return out


def shape_of(state, name: str) -> tuple[int, ...]:
    """A tensor's shape without reading it (from the header of a :class:`LazyState`)."""
    return state.shape(name) if isinstance(state, (LazyState, Renamed)) else tuple(state[name].shape)


class Renamed(Mapping):
    """A read-only view of ``state`` under other names: ``view[name]`` is ``state[names[name]]`` (a bare backbone
    seen with a task model's names, e.g. ``bert.encoder…`` → ``encoder…``). Shapes come from the source."""

    def __init__(self, state, names: dict[str, str]):
        self.state, self.names = state, names

    def __getitem__(self, name: str):
        return self.state[self.names[name]]

    def __contains__(self, name) -> bool:  # without reading the tensor (Mapping's default would)
        return name in self.names and self.names[name] in self.state

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def shape(self, name: str) -> tuple[int, ...]:
        return shape_of(self.state, self.names[name])


def backbone_names(model_names, backbone_names) -> dict[str, str]:
    """Which backbone tensor each of a task model's tensors is: the same name, or the name without the model's
    backbone prefix (``bert.embeddings.word_embeddings.weight`` → ``embeddings.word_embeddings.weight``). Names
    with no counterpart (the task head) are left out."""
    have = set(backbone_names)
    out = {}
    for n in model_names:
        if n in have:
            out[n] = n
        elif "." in n and n.split(".", 1)[1] in have:
            out[n] = n.split(".", 1)[1]
    return out
