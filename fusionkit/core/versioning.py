"""Versions: of the packages a result was made with, and of the kit's own code that made it.

Cached artefacts (experts, Gram/Fisher statistics, transfer sets) are named by a hash of their recipe. The
recipe includes :func:`code_version` of the modules that produce the artefact - a hash of their syntax tree
with docstrings left out - so editing the training or measuring code can never silently reuse an artefact the
old code made, while a reworded comment or docstring keeps the cache.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import textwrap


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _source(name: str) -> str:
    module, _, attr = name.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return inspect.getsource(obj)


@functools.lru_cache(maxsize=None)
def code_version(*names: str) -> str:
    """A 12-hex-digit hash of the code of the named modules - or, as ``"module:function"``, of single functions
    (the ones that make the artefact, so that editing how it is cached or loaded keeps it) - with comments,
    formatting and docstrings ignored."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(ast.dump(_without_docstrings(ast.parse(textwrap.dedent(_source(name))))).encode())
    return h.hexdigest()[:12]


def package_versions() -> dict:
    """The versions a result was made with (written beside every artefact)."""
    import torch
    import transformers

    from .._version import __version__
    return {"fusionkit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
