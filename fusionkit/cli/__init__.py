"""The ``fusionkit`` command: the same public functions the notebooks call, from a shell.

    fusionkit assets [--list]                         fetch, verify and convert the offline models and corpora
    fusionkit zoo NAME --profile smoke|full [--json]  build (or reuse) a zoo and print its expert x task matrix
    fusionkit merge --list | METHOD [--zoo Z] [--experts a,b] [METHOD's options] [--out DIR] [--json]
                                                      merge a zoo and score it next to its experts and the ensemble
    fusionkit search dfwe|evolve [--zoo Z] --profile smoke|full [options] [--out DIR] [--json]
                                                      search merge weights on dev data; report test beside baselines
    fusionkit distill [--entities bundled|PATH] [--split dev|test] [--limit N] [--multi] --profile smoke|full
                      [options] [--json]              teach new entities by context distillation; print the
                                                      before / after / baseline table
    fusionkit distill-zoo [--zoo Z] [--experts A B] [--texts FILE] [--init METHOD] [--steps N] [--json]
                                                      distil a zoo's experts into one student on unlabeled text;
                                                      its scores beside its start, and its cost
    fusionkit stats gram|fisher --model PATH --data CSV --out FILE
                                                      statistics a model's author can publish (RegMean, Fisher)
    fusionkit tour --profile smoke|full               execute every notebook headlessly and print a table
    fusionkit cache list|verify|prune|path [options]  what the cache holds, whether it is whole, reclaim space

Each ``fusionkit merge METHOD`` has its own options, built from the merge registry (``fusionkit merge ties --help``
shows TIES's options and defaults; an option the method lacks is refused by name). Only the named command's
parser is built, so ``fusionkit --help`` and ``fusionkit merge --list`` answer without importing torch.
Errors a user can fix (:class:`~fusionkit.core.errors.FusionkitError`) print as one line; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ..core.errors import FusionkitError, one_line_warnings
from . import arguments, commands


# command -> one-line help; its arguments are arguments.<command>, what it does is commands.<command>
COMMANDS = {
    "assets": "fetch, verify and convert the offline base models and corpora",
    "zoo": "build (or reuse) a zoo of experts and print the expert x task matrix",
    "merge": "merge a zoo's experts; --list shows every method and its options",
    "search": "search merge weights without gradients: DFWE (nevergrad) or the Evolver",
    "distill": "teach new entities by context distillation; before/after/baseline table",
    "distill-zoo": "distil a zoo's experts into one student on unlabeled text; scores beside its start and cost",
    "stats": "measure a model's Gram or Fisher statistics into a file others can merge with (no data needed)",
    "tour": "execute every notebook with papermill and print a table",
    "cache": "list, verify or prune the cache of models, experts and statistics; print its path",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with every command's arguments - or only ``command``'s (the others listed by name), which
    keeps ``fusionkit --help`` from importing what other commands need."""
    p = argparse.ArgumentParser(prog="fusionkit", description="Knowledge fusion of language models, in notebooks.")
    p.add_argument("--version", action="version", version=f"fusionkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help in COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=getattr(commands, name.replace("-", "_")))
        if command is None or command == name:
            getattr(arguments, name.replace("-", "_"))(sp)
    return p


def _command(argv: list[str]) -> str:
    """The command named in ``argv`` ('' if none, e.g. ``fusionkit --help``)."""
    return argv[0] if argv and argv[0] in COMMANDS else ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    one_line_warnings()
    parser = build_parser(_command(argv) or "")
    args, extra = parser.parse_known_args(argv)
    try:
        if extra:
            _refuse(parser, args, extra)
        return args.func(args)
    except FusionkitError as e:
        # Bad input: one line naming the problem and the fix, no traceback. Anything else is a bug: it raises.
        print(f"fusionkit {args.command}: error: {e}", file=sys.stderr)
        return 2


def _refuse(parser, args, extra: list[str]) -> None:
    """Arguments no parser took: for ``merge METHOD``, options of the registry the method lacks (named, with the
    ones it takes); otherwise argparse's usage error."""
    if args.command == "merge" and getattr(args, "method", None):
        from ..merging.registry import check_option_names, get_method

        names = [e[2:].split("=", 1)[0].replace("-", "_") for e in extra if e.startswith("--")]
        check_option_names(get_method(args.method), names)
    parser.error(f"unrecognized arguments: {' '.join(extra)}")

