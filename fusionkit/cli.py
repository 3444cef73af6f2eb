"""The ``fusionkit`` command: the same public functions the notebooks call, from a shell.

    fusionkit assets [--list]                         fetch, verify and convert the offline models and corpora
    fusionkit zoo NAME --profile smoke|full [--json]  build (or reuse) a zoo and print its expert x task matrix
    fusionkit tour --profile smoke|full               execute every notebook headlessly and print a table
"""
from __future__ import annotations

import argparse
import json
import sys


def _assets(args) -> int:
    from .assets import fetch_all, list_assets

    rows = list_assets() if args.list else fetch_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22} {'kind':<17} {'source':<34} {'MB':>6}  cached")
    for r in rows:
        print(f"{r['name']:<22} {r['kind']:<17} {r['source']:<34} {r['size_mb']:>6}  {'yes' if r['cached'] else 'no'}")
    return 0


def _zoo(args) -> int:
    from .zoo import build_zoo

    zoo = build_zoo(args.name, args.profile, seed=args.seed, quiet=args.json)
    data = zoo.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    tasks = list(data["tasks"])
    print(f"zoo {data['zoo']} ({data['profile']}): test accuracy, expert x task (* = own task)")
    print(f"{'expert':<28}" + "".join(f"{t:>14}" for t in tasks))
    for e in data["experts"]:
        cells = "".join(f"{e['scores'][t]['test']:>13.3f}{'*' if e['task'] == t else ' '}" for t in tasks)
        print(f"{e['name']:<28}{cells}")
    print(f"{'chance (majority class)':<28}" + "".join(f"{data['tasks'][t]['chance']:>13.3f} " for t in tasks))
    return 0


def _tour(args) -> int:
    from .tour import format_table, run_tour

    out, rows = run_tour(args.profile, only=args.only, out=args.out, timeout=args.timeout)
    print(format_table(rows))
    print(f"executed notebooks, HTML and recorded numbers: {out}")
    return 0 if all(r["status"] == "ok" for r in rows) and rows else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusionkit", description="Knowledge fusion of language models, in notebooks.")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("assets", help="fetch, verify and convert the offline base models and corpora")
    a.add_argument("--list", action="store_true", help="only list the assets and whether they are cached")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_assets)

    from .zoo import ZOOS

    z = sub.add_parser("zoo", help="build (or reuse) a zoo of experts and print the expert x task matrix")
    z.add_argument("name", choices=sorted(ZOOS))
    z.add_argument("--profile", choices=["smoke", "full"], default="smoke")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    z.set_defaults(func=_zoo)

    t = sub.add_parser("tour", help="execute every notebook with papermill and print a table")
    t.add_argument("--profile", choices=["smoke", "full"], default="smoke")
    t.add_argument("--only", nargs="*", help="run only notebooks whose file name contains one of these")
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    t.set_defaults(func=_tour)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .runtime import quiet_transformers

    quiet_transformers()
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        # Known bad input: one line naming the problem and the fix, no traceback.
        print(f"fusionkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
