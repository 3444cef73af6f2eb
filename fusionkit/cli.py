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
import json
import sys

from ._version import __version__
from .core.errors import FusionkitError, one_line_warnings
from .core.profiles import PROFILES
from .core.runtime import PRECISIONS, quiet_transformers

PRECISION_HELP = "scoring forwards: float32 (default), bfloat16 autocast, or auto (bfloat16 where native)"


def _assets(args) -> int:
    from .data.assets import fetch_all, list_assets

    rows = list_assets() if args.list else fetch_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22} {'kind':<17} {'source':<34} {'MB':>6}  cached  {'on disk MB':>10}")
    for r in rows:
        print(f"{r['name']:<22} {r['kind']:<17} {r['source']:<34} {r['size_mb']:>6}  {'yes' if r['cached'] else 'no':<6}"
              f"  {r['disk_mb']:>10}")
    print("MB: the download; on disk: extracted or converted, in the cache (everything there: fusionkit cache list)")
    return 0


def _zoo(args) -> int:
    from .models.zoo import build_zoo

    quiet_transformers()
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


def _list_methods(args) -> int:
    from .merging.registry import describe_methods

    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        needs = ", ".join(filter(None, ["base" if r["needs_base"] else "", r["stats"] and f"{r['stats']} stats",
                                        r["n_experts"] and f"exactly {r['n_experts']} experts",
                                        r["level"] == "zoo" and "a zoo and its dev data"]))
        print(f"{r['method']:<16} {r['summary']}" + (f"  [needs {needs}]" if needs else ""))
        for k, o in r["options"].items():
            print(f"{'':<18}--{k} (default {o['default']!r}): {o['help']}")
    print("each method's options and reference: fusionkit merge METHOD --help")
    return 0


def _merge(args) -> int:
    if args.list or not args.method:
        return _list_methods(args)
    from .merging.registry import get_method
    from .merging.statedict import ParamFilter
    from .merging.zoo_merge import merge_report
    from .models.zoo import build_zoo

    quiet_transformers()
    method = get_method(args.method)
    # --seed is global: it seeds the zoo, the base head, the statistics and (DARE) the drop masks.
    given = {k: getattr(args, k) for k in method.options if k != "seed" and getattr(args, k, None) is not None}
    if getattr(args, "weights", None):
        given["weights"] = [float(w) for w in args.weights.split(",")]
    if getattr(args, "include", None) or getattr(args, "exclude", None):
        given["filter"] = ParamFilter.parse(args.include, args.exclude)
    if method.stats == "fisher":
        given["fisher_variant"] = args.fisher_variant
    zoo = build_zoo(args.zoo, args.profile, seed=args.seed, quiet=args.json)
    experts = [e.strip() for e in args.experts.split(",")] if args.experts else None
    merged, report = merge_report(args.method, zoo, experts, zoo.evaluator(args.precision), seed=args.seed, **given)
    if args.out:
        from .data.assets import base_path
        from .merging.export import save_merged

        save_merged(merged, args.out, overwrite=args.overwrite, base_path=base_path(zoo.base),
                    extra={"zoo": zoo.name, "profile": zoo.profile.name, "scores": report["results"]})
        report["out"] = args.out
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    tasks = list(report["results"])
    print(f"{args.method} on zoo {zoo.name} ({zoo.profile.name}), options {report['options']}; heads {report['heads']}")
    print(f"{'test accuracy':<28}" + "".join(f"{t:>14}" for t in tasks) + f"{'mean':>10}")
    rows = [(f"merged ({args.method})", report["results"]), ("ensemble (logits)", report["ensemble"])]
    rows += [(f"expert {n}", s) for n, s in report["experts"].items()] + [("chance", None)]
    for label, scores in rows:
        vals = [report["chance"][t] if scores is None else scores[t]["test"] for t in tasks]
        print(f"{label:<28}" + "".join(f"{v:>14.3f}" for v in vals) + f"{sum(vals) / len(vals):>10.3f}")
    for note in report["notes"]:
        print("note:", note)
    if args.out:
        print(f"saved to {args.out}")
    return 0


def _search(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from .models.zoo import build_zoo
    from .search.dfwe import dfwe_report
    from .search.evolver import evolve_report
    from .search.protocol import check_search_options

    quiet_transformers()
    if args.method == "dfwe":  # bad options fail before the zoo is built
        check_search_options(budget=args.budget, optimizer=args.optimizer)
    else:
        check_search_options(F=args.F, CR=args.CR)
    zoo = build_zoo(args.zoo or ("transfer" if args.method == "dfwe" else "multitask"), args.profile, seed=args.seed,
                    quiet=args.json)
    pool = ThreadPoolExecutor(args.num_workers) if args.num_workers > 1 else None
    try:
        if args.method == "dfwe":
            merged, report = dfwe_report(zoo, args.optimizer, args.budget, args.parametrization, args.l1,
                                         num_workers=args.num_workers, executor=pool, seed=args.seed, quiet=args.json,
                                         precision=args.precision)
        else:
            merged, report = evolve_report(zoo, None if args.merger == "none" else args.merger, args.F, args.CR,
                                           args.generations, args.mutation, executor=pool, seed=args.seed,
                                           quiet=args.json, precision=args.precision, acceptance=args.acceptance)
    finally:
        if pool is not None:
            pool.shutdown()
    if args.out:
        from .data.assets import base_path
        from .merging.export import save_merged

        save_merged(merged, args.out, overwrite=args.overwrite, base_path=base_path(zoo.base),
                    extra={"zoo": zoo.name, "profile": zoo.profile.name, "best": report["best"],
                           "baselines": report["baselines"]})
        report["out"] = args.out
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    key = "eval" if args.method == "dfwe" else "generation"
    hist = report["history"]
    print(f"{args.method} on zoo {zoo.name} ({zoo.profile.name}), options "
          f"{ {k: v for k, v in report['options'].items() if k != 'experts'} }")
    step = max(1, len(hist) // 10)
    best = float("-inf")
    for h in hist:
        best = max(best, h["dev"])
        if h[key] % step == 0 or h is hist[-1]:
            extra = f"  accepted {h['accepted']}" if key == "generation" else f"  w={h['weights']}"
            print(f"  {key} {h[key]:>3}  dev {h['dev']:.3f}  best so far {best:.3f}{extra}")
    tasks = list(report["best"]["test"])
    print(f"\n{'(dev: ' + str(report['dev_examples'] or 'all') + ' per task)':<44}{'dev':>8}"
          + "".join(f"{t:>14}" for t in tasks) + f"{'test mean':>11}")
    for label, r in [(f"{args.method} (best on dev)", report["best"]), *report["baselines"].items()]:
        vals = [r["test"][t] for t in tasks]
        print(f"{label:<44}{r['dev']:>8.3f}" + "".join(f"{v:>14.3f}" for v in vals) + f"{sum(vals) / len(vals):>11.3f}")
    if args.out:
        print(f"saved to {args.out}")
    return 0


def _distill(args) -> int:
    from .core.runtime import seed_everything
    from .data.assets import load_base
    from .distill import format_table, load_entities, load_facts, run, settings

    quiet_transformers()
    cfg = settings(args.profile, limit=args.limit, lr=args.lr, steps=args.steps, continuations=args.continuations,
                   params=args.params, tau=args.tau, clip=args.clip, seed=args.seed,
                   after_mention=args.after_mention or None, reset_optimizer=False if args.no_reset else None)
    entities = load_entities(args.entities, args.split)  # bad files fail before the model loads
    facts = load_facts()
    seed_everything(args.seed)
    model, tokenizer = load_base(args.model)
    report = run(model, tokenizer, entities, facts, cfg, multi=args.multi, model_id=args.model, quiet=args.json)
    report.pop("raw")  # per-probe rows: too long for a terminal
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"context distillation, {len(report['options']['entities'])} {args.split} entities "
          f"({'multi' if args.multi else 'single'}-entity, {args.profile}): lr {cfg.lr}, {cfg.continuations} "
          f"continuations x {cfg.steps} steps, params {cfg.params}")
    print(f"KL first step {report['kl_first']:.4f}, last step {report['kl_last']:.4f}; on each continuation it "
          f"falls by {report['kl_drop']:.4f} on average while trained on it; {report['seconds']:.0f} s")
    print(format_table(report))
    return 0


def _tour(args) -> int:
    from .tour import format_table, run_tour

    out, rows = run_tour(args.profile, only=args.only, out=args.out, timeout=args.timeout)
    print(format_table(rows))
    print(f"executed notebooks, HTML and recorded numbers: {out}")
    return 0 if all(r["status"] == "ok" for r in rows) and rows else 1


def _cache(args) -> int:
    from .core import inventory
    from .core.cache import cache_root

    kinds = [k.strip() for k in args.kind.split(",")] if getattr(args, "kind", None) else None
    if args.action == "path":
        print(cache_root().joinpath(*([args.sub] if args.sub else [])))
        return 0
    if args.action == "list":
        rows = [e.to_dict() for e in inventory.scan(kinds)]
        text = inventory.format_list(rows)
    elif args.action == "verify":
        rows = inventory.verify(kinds, args.paths, move_aside=args.move_aside)
        text = inventory.format_verify(rows)
    else:
        rows = inventory.prune(kinds, args.older_than and inventory.parse_age(args.older_than),
                               args.max_size and inventory.parse_size(args.max_size), dry_run=args.dry_run)
        text = inventory.format_prune(rows, args.dry_run)
    print(json.dumps(rows, indent=2) if args.json else text)
    return 1 if args.action == "verify" and any(r["state"] in ("damaged", "missing") for r in rows) else 0


# ------------------------------------------------------------------------------------------ parsers
def _profile(p) -> None:
    p.add_argument("--profile", choices=list(PROFILES), default="smoke")


def _bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def _add_assets(a) -> None:
    a.add_argument("--list", action="store_true", help="only list the assets and whether they are cached")
    a.add_argument("--json", action="store_true")


def _add_zoo(z) -> None:
    from .models.zoo import ZOOS

    z.add_argument("name", choices=sorted(ZOOS))
    _profile(z)
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_merge(m) -> None:
    from .merging.methods.fisher import VARIANTS
    from .merging.registry import METHODS
    from .models.zoo import ZOOS

    m.add_argument("--list", action="store_true", help="list the methods and their options")
    m.add_argument("--json", action="store_true", help="with --list: one JSON object")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("zoo and output")
    g.add_argument("--zoo", choices=sorted(ZOOS), default="multitask")
    g.add_argument("--experts", help="comma-separated expert names (default: the whole zoo)")
    _profile(g)
    g.add_argument("--seed", type=int, default=0, help="seeds the zoo, the base head, statistics and random masks")
    g.add_argument("--precision", choices=PRECISIONS, default="float32", help=PRECISION_HELP)
    g.add_argument("--out", help="write the merged model folder(s) + recipe.json (+ mergekit.yml) here")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    methods = m.add_subparsers(dest="method", metavar="METHOD", title="methods (fusionkit merge METHOD --help)")
    for meth in METHODS.values():
        sp = methods.add_parser(meth.name, parents=[common], help=meth.summary,
                                description=f"{meth.summary}\nreference: {meth.reference}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        own = sp.add_argument_group(f"{meth.name} options")
        for k, o in meth.options.items():
            if k == "seed":  # the global --seed
                continue
            kind = _bool if isinstance(o.default, bool) else type(o.default)
            rule = f"; {o.rule}" if o.rule else ""
            own.add_argument(f"--{k}", type=kind, default=None, help=f"{o.help} (default: {o.default!r}{rule})")
        if meth.stats == "fisher":
            own.add_argument("--fisher-variant", choices=VARIANTS, default="sample",
                             help="label of log p(y|x): sampled (true Fisher), argmax, or gold (empirical)")
        if meth.level == "tensor":
            own.add_argument("--weights", help="comma-separated coefficients, one per expert")
            own.add_argument("--include", help="comma-separated parameter-name globs to merge (default all)")
            own.add_argument("--exclude", help="comma-separated parameter-name globs to leave at the base / average")


def _add_search(s) -> None:
    from .merging.registry import METHODS
    from .models.zoo import ZOOS
    from .search.evolver import ACCEPTANCE, MUTATIONS
    from .search.interpolation import PARAMETRIZATIONS

    s.add_argument("method", choices=["dfwe", "evolve"])
    s.add_argument("--zoo", choices=sorted(ZOOS), help="default: transfer for dfwe, multitask for evolve")
    _profile(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-workers", type=int, default=1, help="evaluate this many candidates at once (threads)")
    s.add_argument("--precision", choices=PRECISIONS, default="float32", help=PRECISION_HELP)
    g = s.add_argument_group("dfwe")
    g.add_argument("--optimizer", default="NGOpt", help="any nevergrad optimiser name (NGOpt, CMA, DE, PSO, ...)")
    g.add_argument("--budget", type=int, default=30, help="evaluations on dev data")
    g.add_argument("--parametrization", choices=PARAMETRIZATIONS, default="simplex")
    g.add_argument("--l1", type=float, default=0.0, help="penalty l1 * mean|w| added to the loss -dev")
    g = s.add_argument_group("evolve")
    mergers = [m.name for m in METHODS.values() if m.level == "tensor" and m.n_experts is None]
    g.add_argument("--merger", default="average", choices=mergers + ["none"],
                   help="merge the population with this method (none: compare offspring with parents directly)")
    g.add_argument("--F", type=float, default=0.5, help="mutation scale in (0, 1]")
    g.add_argument("--CR", type=float, default=0.5, help="crossover rate in (0, 1]")
    g.add_argument("--generations", type=int, default=3)
    g.add_argument("--mutation", choices=MUTATIONS, default="current-to-other")
    g.add_argument("--acceptance", choices=ACCEPTANCE, default="batch",
                   help="batch: a generation's offspring scored together (the kit's); sequential: one at a time in "
                        "random order, kept at once when the merge improves (the reference code)")
    s.add_argument("--out", help="write the best model folder(s) + recipe.json here")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--json", action="store_true")


def _add_distill(d) -> None:
    d.add_argument("--entities", default="bundled", help="bundled or a path to Entity Inferences JSON lines")
    d.add_argument("--split", choices=["dev", "test"], default="test")
    d.add_argument("--limit", type=int, help="at most this many entities (default: the profile's)")
    d.add_argument("--multi", action="store_true", help="inject all entities into one student (shuffled)")
    _profile(d)
    d.add_argument("--model", default="smollm2-135m", help="a bundled causal base, a local folder or a hub id")
    d.add_argument("--lr", type=float)
    d.add_argument("--steps", type=int, help="steps per continuation")
    d.add_argument("--continuations", type=int, help="continuations per entity")
    d.add_argument("--params", help="which parameters train: all, mlp or layers:A-B")
    d.add_argument("--tau", type=float, help="distillation temperature (default 2)")
    d.add_argument("--clip", type=float, help="max gradient norm (0 = none)")
    d.add_argument("--after-mention", action="store_true", help="distil only positions after the entity mention")
    d.add_argument("--no-reset", action="store_true", help="keep one AdamW state across continuations")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true")


def _add_tour(t) -> None:
    _profile(t)
    t.add_argument("--only", nargs="*", help="run only notebooks whose file name contains one of these")
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--timeout", type=int, default=1800, help="seconds per cell")


def _add_cache(c) -> None:
    actions = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    kind = argparse.ArgumentParser(add_help=False)
    kind.add_argument("--kind", help="comma-separated kinds (top-level folders: experts, stats, models, ...)")
    kind.add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions.add_parser("list", parents=[kind], help="every artefact: kind, size, last used, what made it")
    v = actions.add_parser("verify", parents=[kind], help="hash every file against its manifest; report damage")
    v.add_argument("paths", nargs="*", help="folders outside the cache to check too (e.g. a merged model)")
    v.add_argument("--move-aside", action="store_true", help="move damaged artefacts aside so the kit rebuilds them")
    p = actions.add_parser("prune", parents=[kind], help="remove leftovers, damaged entries and chosen artefacts",
                           description="Always removes damaged entries and temporaries of writes that died; "
                                       "--kind, --older-than and --max-size choose artefacts too.")
    p.add_argument("--older-than", help="artefacts last used longer ago than this (30d, 12h, 2w; a number is days)")
    p.add_argument("--max-size", help="remove least recently used artefacts until the rest fit (500MB, 2GB)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    actions.add_parser("path", help="print the cache folder (or one kind's)").add_argument("sub", nargs="?")


# command -> (one-line help, adds its arguments, runs it)
COMMANDS = {
    "assets": ("fetch, verify and convert the offline base models and corpora", _add_assets, _assets),
    "zoo": ("build (or reuse) a zoo of experts and print the expert x task matrix", _add_zoo, _zoo),
    "merge": ("merge a zoo's experts; --list shows every method and its options", _add_merge, _merge),
    "search": ("search merge weights without gradients: DFWE (nevergrad) or the Evolver", _add_search, _search),
    "distill": ("teach new entities by context distillation; before/after/baseline table", _add_distill, _distill),
    "tour": ("execute every notebook with papermill and print a table", _add_tour, _tour),
    "cache": ("list, verify or prune the cache of models, experts and statistics; print its path", _add_cache, _cache),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with every command's arguments - or only ``command``'s (the others listed by name), which
    keeps ``fusionkit --help`` from importing what other commands need."""
    p = argparse.ArgumentParser(prog="fusionkit", description="Knowledge fusion of language models, in notebooks.")
    p.add_argument("--version", action="version", version=f"fusionkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help, add, run) in COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=run)
        if command is None or command == name:
            add(sp)
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
        from .merging.registry import check_option_names, get_method

        names = [e[2:].split("=", 1)[0].replace("-", "_") for e in extra if e.startswith("--")]
        check_option_names(get_method(args.method), names)
    parser.error(f"unrecognized arguments: {' '.join(extra)}")


if __name__ == "__main__":
    sys.exit(main())
