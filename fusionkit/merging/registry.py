"""The merge registry: every merge method under one name, one signature and one description.

A method is a function registered with :func:`register`. Its options are its keyword-only parameters: the
default is written once, in the signature; :func:`register` adds a help text and an optional range check per
option, a one-line summary and a reference (the paper). Three levels:

* ``"tensor"`` methods - ``fn(tensors, base, w, ctx, *, options)`` - merge one parameter tensor given the i-th
  expert's tensor θᵢ, the base's θ₀ (or None), the per-expert coefficients w and a context (``ctx["name"]``,
  ``ctx["stats"]``, ``ctx["notes"]``). Defined per tensor, they stream through safetensors files.
* ``"task"`` methods - same signature, returning :class:`~fusionkit.merging.task_models.TaskParts` - merge into
  one shared task vector plus a mask (and a rescaler) per expert: one light model per task (EMR-merging, TALL
  masks), run by :func:`~fusionkit.merging.task_models.merge_task_specific`.
* ``"zoo"`` methods - ``fn(zoo, evaluator, experts, *, options) -> (Merged, trace)`` - need a whole zoo and dev
  data (greedy soup scores its soups).

A statistics-based method may also name ``prepare(stats, names, options) -> stats``: a whole-model step run once
before the per-tensor loop (Fisher's per-model normalisation needs every tensor's Fisher at once).

Everything that lists or calls merges - the command line, :func:`~fusionkit.merging.merge.merge`, the zoo-level
helpers, the notebooks' method comparer - reads this registry, so a new method is one function in one file of
``merging/methods/``. This module imports nothing heavy: listing methods never loads torch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from ..core.errors import MergeError

LEVELS = ("tensor", "task", "zoo")


@dataclass(frozen=True)
class Doc:
    """What :func:`register` is told about one option: its help text and, optionally, its valid range."""

    help: str
    check: Callable[[object], bool] | None = None
    rule: str = ""


def option(help: str, check: Callable[[object], bool] | None = None, rule: str = "") -> Doc:
    """Describe an option for :func:`register`; its default comes from the method's signature."""
    return Doc(help, check, rule)


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    help: str
    check: Callable[[object], bool] | None = None
    rule: str = ""

    def validate(self, method: str, value) -> None:
        if self.check is not None and not self.check(value):
            raise MergeError(f"{method}: {self.name}={value!r} must be {self.rule}; fix: the default is {self.default!r}")


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable
    summary: str
    reference: str
    level: str = "tensor"
    needs_base: bool = False
    stats: str | None = None  # "fisher" or "gram": the measure step the method needs
    n_experts: int | None = None  # exactly this many experts (SLERP: 2)
    options: dict[str, Option] = field(default_factory=dict)
    prepare: Callable | None = None  # whole-model step on the statistics before the per-tensor loop
    # a NaN or Inf input shows - every input entry reaches the output through a sum (NaN and Inf propagate, even at
    # weight 0), or the method raises NonFiniteInput when it meets one (TIES's cut reads every entry): the driver
    # checks the merged tensor instead of reading every input once more beforehand
    propagates: bool = False

    def resolve(self, given: dict) -> dict:
        """Every option's value: the defaults updated by ``given``; unknown names and out-of-range values fail."""
        check_option_names(self, given)
        out = {k: o.default for k, o in self.options.items()}
        out.update(given)
        for k, o in self.options.items():
            o.validate(self.name, out[k])
        return out


METHODS: dict[str, Method] = {}


def register(name: str, summary: str, *, reference: str, level: str = "tensor", needs_base: bool = False,
             stats: str | None = None, n_experts: int | None = None, prepare: Callable | None = None,
             propagates: bool = False, **docs: Doc):
    """Register ``fn`` under ``name``; every keyword-only parameter of ``fn`` is an option and needs a :class:`Doc`."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r} must be one of {LEVELS}")

    def wrap(fn):
        params = {k: p for k, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
        # A developer error, caught at import: every option has a default and a help text, and nothing else.
        if set(params) != set(docs) or any(p.default is p.empty for p in params.values()):
            raise TypeError(f"merge method {name!r}: keyword-only parameters {sorted(params)} (each with a default) "
                            f"must match the documented options {sorted(docs)}")
        options = {k: Option(k, params[k].default, d.help, d.check, d.rule) for k, d in docs.items()}
        METHODS[name] = Method(name, fn, summary, reference, level, needs_base, stats, n_experts, options, prepare,
                               propagates)
        return fn
    return wrap


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; fix: use one of {', '.join(METHODS)}")
    return METHODS[name]


def check_option_names(method: Method, names) -> None:
    """Fail, naming them, on options the method does not have."""
    unknown = sorted(set(names) - set(method.options))
    if unknown:
        raise MergeError(f"{method.name} has no option(s) {unknown}; fix: it takes "
                         f"{sorted(method.options) or 'none'} (see `fusionkit merge {method.name} --help`)")


def describe_methods() -> list[dict]:
    """Every method with its level, needs, reference and options, for ``fusionkit merge --list`` and notebooks."""
    return [{"method": m.name, "summary": m.summary, "reference": m.reference, "level": m.level,
             "needs_base": m.needs_base, "stats": m.stats, "n_experts": m.n_experts,
             "options": {k: {"default": o.default, "help": o.help, **({"rule": o.rule} if o.rule else {})}
                         for k, o in m.options.items()}}
            for m in METHODS.values()]
