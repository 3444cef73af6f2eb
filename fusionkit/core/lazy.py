"""Deferred imports, so that declaring things stays cheap.

The merge registry (every method's name, options and defaults) must answer ``fusionkit --help`` and
``fusionkit merge --list`` without loading torch (seconds of start-up). Modules that *declare* methods next to
their math bind ``torch = lazy_import("torch")``: the name exists at once, and torch is really imported on the
first attribute access - that is, when a method first runs. Standard library machinery
(:class:`importlib.util.LazyLoader`); a module that is already imported is returned as it is.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def lazy_import(name: str) -> ModuleType:
    """The module ``name``, loaded on first attribute access (or at once if it is already imported)."""
    with _LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"no module named {name!r}")
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module
