"""State-dict algebra: task vectors, parameter filters, flattening and compatibility checks.

Notation (Ilharco et al. 2023, *Editing Models with Task Arithmetic*): base weights θ₀, expert weights θᵢ,
task vector τᵢ = θᵢ − θ₀. Everything here works on plain ``{name: tensor}`` dicts so it applies equally to
a live model's ``state_dict()`` and to tensors read lazily from safetensors files.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

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
                raise ValueError(f"{label} has no parameter {name!r} (it has {len(state)} others); "
                                 "fix: merge models of the same architecture")
            if shape_of(state, name) != shape_of(ref, name):
                raise ValueError(f"parameter {name!r} has shape {shape_of(state, name)} in {label} but "
                                 f"{shape_of(ref, name)} in {labels[0]}; fix: merge models of the same architecture")


def check_finite(name: str, tensor: torch.Tensor, label: str = "input") -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"{label} has NaN or Inf values in {name!r}; fix: check that model (a diverged fine-tune?)")


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
        raise ValueError(f"vector has {vector.numel()} entries but the parameters need {offset}")
    return out


# ------------------------------------------------------------------------------------------ lazy safetensors I/O
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


class LazyState(Mapping):
    """A read-only ``{name: tensor}`` view of a safetensors file that reads a tensor only when asked.

    Each access is one positioned read of that tensor's bytes (no memory map, so file pages stay in the OS
    page cache instead of the process's resident memory). Merging through these keeps one tensor per input
    in memory at a time instead of N whole models. ``shape(name)`` and ``dtype_name(name)`` come from the header.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self._metadata = header.pop("__metadata__", {}) or {}
        self._header = header
        self._start = 8 + n

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self._header[name]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = _FROM_NAME[info["dtype"]]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            f.readinto(buf)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def __iter__(self):
        return iter(sorted(self._header, key=lambda n: self._header[n]["data_offsets"][0]))

    def __len__(self) -> int:
        return len(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def dtype_name(self, name: str) -> str:
        return self._header[name]["dtype"]

    def metadata(self) -> dict:
        return dict(self._metadata)


def shape_of(state, name: str) -> tuple[int, ...]:
    return state.shape(name) if isinstance(state, LazyState) else tuple(state[name].shape)


class SafetensorsWriter:
    """Write a safetensors file one tensor at a time: the header (names, dtypes, shapes, offsets) is known up
    front, so each tensor's bytes go to disk as soon as it is computed and nothing accumulates in memory.

    The file is written under a temporary name and renamed into place on a clean exit (atomic).
    """

    def __init__(self, path: str | os.PathLike, layout: dict[str, tuple[str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.layout = layout
        header, offset = {}, 0
        for name, (dtype, shape) in layout.items():
            size = math.prod(shape) * _ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as safetensors does
        self._header = blob
        self._order = list(layout)
        self._next = 0

    def __enter__(self) -> "SafetensorsWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(self._header)))
        self._f.write(self._header)
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self._order[self._next] if self._next < len(self._order) else None
        if name != expected:
            raise ValueError(f"tensors must be written in layout order: expected {expected!r}, got {name!r}")
        dtype, shape = self.layout[name]
        if _DTYPES[tensor.dtype] != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{name}: got {_DTYPES[tensor.dtype]}{tuple(tensor.shape)}, layout says {dtype}{shape}")
        self._f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._f.close()
        if exc_type is None and self._next == len(self._order):
            os.replace(self._tmp, self.path)
            return
        os.unlink(self._tmp)  # interrupted or incomplete: leave nothing that looks like a finished file
        if exc_type is None:
            raise ValueError(f"only {self._next} of {len(self._order)} tensors were written")


_FROM_NAME = {v: k for k, v in _DTYPES.items()}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# ------------------------------------------------------------------------------------------ task-vector analysis
def cosine_matrix(taus: list[StateDict], names: list[str] | None = None) -> torch.Tensor:
    """Pairwise cosine similarity of flattened task vectors (near 0: the tasks change different directions)."""
    names = names or [n for n in taus[0] if taus[0][n].is_floating_point()]
    flat = torch.stack([flatten(t, names).double() for t in taus])
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (flat @ flat.T).float()


def sign_conflicts(taus: list[StateDict], density: float = 0.2, group=lambda name: name) -> dict[str, float]:
    """Per group of parameters: among entries that at least two trimmed task vectors change, the fraction
    where they disagree in sign - the interference TIES resolves (Yadav et al. 2023, Fig. 2)."""
    from .merge import trim  # the same trimming TIES uses

    counts: dict[str, list[int]] = {}
    for name in taus[0]:
        if not taus[0][name].is_floating_point() or taus[0][name].dim() == 0:
            continue
        trimmed = torch.stack([trim(t[name].float(), density) for t in taus])
        nonzero = trimmed != 0
        touched = nonzero.sum(0) >= 2
        pos = ((trimmed > 0) & nonzero).any(0)
        neg = ((trimmed < 0) & nonzero).any(0)
        c = counts.setdefault(group(name), [0, 0])
        c[0] += int((touched & pos & neg).sum())
        c[1] += int(touched.sum())
    return {g: (a / b if b else 0.0) for g, (a, b) in counts.items()}


def layer_of(name: str) -> str:
    """Group parameter names by transformer block (``layer.3``), else by their top module."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layer", "layers", "h") and parts[i + 1].isdigit():
            return f"layer {int(parts[i + 1]):02d}"
    return parts[1] if len(parts) > 2 else parts[0]
