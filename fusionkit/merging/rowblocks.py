"""Row blocks: one tensor's merge computed a block of rows at a time, on the CPU or a GPU.

A merge that acts entry by entry across the experts - weighted sums, TIES's sign election and disjoint mean, DARE's
drops, DELLA's per-row ranks - gives the same result on any split of a tensor's rows. Computed block by block, its
intermediates (stacked task vectors, masks, signs) stay at a block's size, about 1 MB per input on the CPU, instead
of several copies of the largest tensor (SmolLM2-135M's 49152 x 576 embedding is 113 MB per float32 copy): TIES,
DARE and DELLA then peak near the linear merge's memory, and a block's intermediates stay in the CPU's cache. What
needs the whole tensor - TIES's cut (:func:`fusionkit.merging.ops.trim_cut`), an L1 rescale over all entries - is
computed first, or the method asks for one block (``whole=True``).

Precision: blocks are computed in float32, or float64 when an input is float64 (:func:`working_dtype`), unless a
method asks for float64; each method's docstring says where it keeps float64 and why.

Device: ``ctx["device"]`` (from ``merge(..., device=)``) is where the blocks are computed; each block is copied
there and its result copied back into the output, which stays on the inputs' device (the CPU when streaming
files). Random generators stay on the CPU, so masks are the same on every device.
"""
from __future__ import annotations

import math
from typing import Callable

from ..core.lazy import lazy_import

torch = lazy_import("torch")

# Entries per block: on the CPU ~1 MB of float32 per input (a block's intermediates fit in cache); on a GPU large
# blocks, since each costs a host-device copy and kernel launches.
BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


def working_dtype(*tensors) -> "torch.dtype":
    """float32, or float64 when any input is float64 (half and bfloat16 inputs compute in float32)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def compute_device(ctx: dict | None, like) -> "torch.device":
    """The device a method computes on: ``ctx["device"]`` if set, else the inputs' own."""
    device = (ctx or {}).get("device")
    return torch.device(device) if device is not None else like.device


def as_rows(t):
    """A 2-D view [rows, columns]: rows are the first dimension; a 0-D or 1-D tensor is one row."""
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def row_slices(t, device, whole: bool = False) -> list[slice]:
    """The row ranges of ``as_rows(t)``, each about ``BLOCK_ELEMENTS`` entries (at least one row)."""
    rows, cols = as_rows(t).shape
    step = rows if whole else max(1, BLOCK_ELEMENTS.get(torch.device(device).type, 1 << 24) // max(cols, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, max(step, 1))]


def row_block(t, rows: slice, device, dtype):
    """Rows ``rows`` of ``as_rows(t)`` on ``device`` in ``dtype`` (a view when nothing changes: never write to it)."""
    return None if t is None else as_rows(t)[rows].to(device, dtype)


class Scratch:
    """Buffers reused from block to block of one tensor's merge: ``scratch(key, like)`` is a buffer of ``like``'s
    shape, dtype and device, the same memory each time for the same key (grown when a block is larger). Fresh
    tensors per block and step cost an allocation and, for blocks past the allocator's threshold, page faults on
    memory that a reused buffer keeps in the cache."""

    def __init__(self):
        self._buffers: dict = {}

    def __call__(self, key, like, n: int | None = None):
        """A buffer shaped like ``like`` (``[n, *like.shape]`` with ``n``: a stack of n such blocks)."""
        shape = tuple(like.shape) if n is None else (n, *like.shape)
        size, buf = math.prod(shape), self._buffers.get(key)
        if buf is None or buf.numel() < size or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[key] = torch.empty(size, dtype=like.dtype, device=like.device)
        return buf[:size].view(shape)


def map_rows(fn: Callable, tensors: list, ctx: dict | None = None, whole: bool = False, dtype=None,
             into: bool = False):
    """``fn(*blocks)`` over row blocks of ``tensors`` (all of one shape; ``None`` entries are passed as ``None``),
    computed in ``dtype`` (default: the working dtype) and assembled into one tensor of their shape in the working
    dtype - a float64 block of float32 inputs is rounded once, as the driver would - on the first tensor's device.

    ``fn`` gets each tensor's rows as ``[r, columns]`` on the compute device and returns the merged rows; it must not
    write to its arguments (they may be views of the inputs). Blocks are visited in order, so a random generator
    ``fn`` draws from gives the same stream as one draw over the whole tensor. ``whole=True``: one block.
    ``into=True``: ``fn(dst, *blocks)`` writes the merged rows into ``dst`` - the output's own rows where they are
    on the compute device in ``dtype``, so a block costs no temporary and no copy back."""
    ref = next(t for t in tensors if t is not None)
    device, stored = compute_device(ctx, ref), working_dtype(*tensors)
    dtype = dtype or stored
    out = torch.empty(ref.shape, dtype=stored, device=ref.device)
    view = as_rows(out)
    direct = into and out.device == device and stored == dtype
    for rows in row_slices(ref, device, whole):
        blocks = (row_block(t, rows, device, dtype) for t in tensors)
        if direct:
            fn(view[rows], *blocks)
        elif into:
            dst = torch.empty(view[rows].shape, dtype=dtype, device=device)
            fn(dst, *blocks)
            view[rows].copy_(dst)
        else:
            view[rows].copy_(fn(*blocks))  # back from the device
    return out
