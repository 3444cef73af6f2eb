"""Running candidate evaluations: in this process, or on any ``concurrent.futures``-style executor.

Any object with ``submit(fn, arg) -> future`` and ``future.result()`` works (``ThreadPoolExecutor``,
``ProcessPoolExecutor``, a ``dask.distributed.Client``). Results always come back in input order, so a seeded
search takes the same path whatever ran its evaluations.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from ..core.errors import SearchError


def check_executor(executor) -> None:
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise SearchError(f"executor {executor!r} has no submit(); fix: pass a concurrent.futures executor "
                          "(ThreadPoolExecutor, ProcessPoolExecutor) or a dask.distributed Client")


def map_ordered(fn: Callable, items: Iterable, executor=None) -> list:
    """``[fn(x) for x in items]``, run on ``executor`` when given; results in input order."""
    items = list(items)
    if executor is None:
        return [fn(x) for x in items]
    futures = [executor.submit(fn, x) for x in items]
    return [f.result() for f in futures]


def timed(fn: Callable, *args) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0
