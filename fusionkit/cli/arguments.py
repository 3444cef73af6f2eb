"""The arguments of each ``fusionkit`` command: one function per command that adds them to its parser. Choices
come from where they are defined (the zoos, the merge registry, the profiles), so the command line cannot drift."""
from __future__ import annotations

import argparse

from ..core.profiles import PROFILES
from ..core.runtime import PRECISIONS

PRECISION_HELP = "scoring forwards: float32 (default), bfloat16 autocast, or auto (bfloat16 where native)"


def profile(p) -> None:
    p.add_argument("--profile", choices=list(PROFILES), default="smoke")


def as_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def assets(a) -> None:
    a.add_argument("names", nargs="*", metavar="NAME",
                   help="fetch only these (opt-in assets such as gemma3-270m are fetched only when named)")
    a.add_argument("--list", action="store_true", help="only list the assets and whether they are cached")
    a.add_argument("--json", action="store_true")


def zoo(z) -> None:
    from ..models.zoo import ZOOS

    z.add_argument("name", choices=sorted(ZOOS))
    profile(z)
    z.add_argument("--precision", choices=PRECISIONS, default="float32", help=PRECISION_HELP)
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def merge(m) -> None:
    from ..merging.methods.fisher import VARIANTS
    from ..merging.registry import METHODS
    from ..models.zoo import ZOOS

    m.add_argument("--list", action="store_true", help="list the methods and their options")
    m.add_argument("--json", action="store_true", help="with --list or --config: one JSON object")
    c = m.add_argument_group("a mergekit config (fusionkit merge --config FILE.yml --out DIR [--data F])")
    c.add_argument("--config", metavar="FILE.yml", help="run a mergekit config with the kit (the methods both have)")
    c.add_argument("--out", dest="config_out", metavar="DIR", help="with --config: the merged model folder")
    c.add_argument("--data", dest="config_data", metavar="FILE", help="with --config: score on a CSV or text file")
    c.add_argument("--overwrite", dest="config_overwrite", action="store_true", help="with --config: replace --out")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("zoo and output")
    g.add_argument("--zoo", choices=sorted(ZOOS), default="multitask")
    g.add_argument("--experts", help="comma-separated expert names (default: the whole zoo)")
    g.add_argument("--models", nargs="+", metavar="FOLDER", help="merge your own checkpoints (save_pretrained "
                   "folders or hub ids) instead of a zoo; needs --out")
    g.add_argument("--base", metavar="FOLDER", help="with --models: the model they were fine-tuned from (θ₀)")
    g.add_argument("--data", metavar="FILE", help="with --models: score on a CSV (text,label) or a text file (LMs)")
    g.add_argument("--stats", nargs="+", metavar="FILE", help="with --models (regmean, fisher): published statistics "
                   "files, one per model in order (fusionkit stats), instead of measuring them on --data")
    g.add_argument("--eval-all", action="store_true",
                   help="with --data CSV: score every row (a scoring-only file) instead of the held-out split")
    profile(g)
    g.add_argument("--seed", type=int, default=0, help="seeds the zoo, the base head, statistics and random masks")
    g.add_argument("--precision", choices=PRECISIONS, default="float32", help=PRECISION_HELP)
    g.add_argument("--out", help="write the merged model folder(s) + recipe.json (+ mergekit.yml) here")
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--sentence-transformers", action="store_true", help="with --out (a zoo merge): also write "
                   "DIR/sentence-transformers/, the merged encoder that SentenceTransformer(path) loads, pooling kept")
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
            kind = as_bool if isinstance(o.default, bool) else type(o.default)
            rule = f"; {o.rule}" if o.rule else ""
            own.add_argument(f"--{k}", type=kind, default=None, help=f"{o.help} (default: {o.default!r}{rule})")
        if meth.stats == "fisher":
            own.add_argument("--fisher-variant", choices=VARIANTS, default="sample",
                             help="label of log p(y|x): sampled (true Fisher), argmax, or gold (empirical)")
        if meth.level == "task":
            own.add_argument("--per-task", metavar="OPTION=V1,V2,...",
                             help="choose this option per task on validation from these values (e.g. lam=0.2,0.4,0.6)")
        if meth.level in ("tensor", "task"):
            own.add_argument("--weights", help="comma-separated coefficients, one per expert")
            own.add_argument("--include", help="comma-separated parameter-name globs to merge (default all)")
            own.add_argument("--exclude", help="comma-separated parameter-name globs to leave at the base / average")


def search(s) -> None:
    from ..merging.registry import METHODS
    from ..models.zoo import ZOOS
    from ..search.evolver import ACCEPTANCE, MUTATIONS, REFERENCE
    from ..search.interpolation import PARAMETRIZATIONS

    s.add_argument("method", choices=["dfwe", "evolve"])
    s.add_argument("--zoo", choices=sorted(ZOOS), help="default: transfer for dfwe, multitask for evolve")
    s.add_argument("--experts", nargs="+", metavar="NAME",
                   help="search over these experts of the zoo only, scored on their tasks (default: all)")
    profile(s)
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
    # The defaults are the reference code's schedule (fusionkit.search.evolver.REFERENCE).
    g.add_argument("--F", type=float, default=REFERENCE["F"], help="mutation scale in (0, 1] (reference: 0.1)")
    g.add_argument("--CR", type=float, default=REFERENCE["CR"], help="crossover rate in (0, 1]")
    g.add_argument("--generations", type=int, default=REFERENCE["generations"])
    g.add_argument("--mutation", choices=MUTATIONS, default="current-to-other")
    g.add_argument("--acceptance", choices=ACCEPTANCE, default=REFERENCE["acceptance"],
                   help="sequential (the reference code, default): one offspring at a time in random order, kept at "
                        "once when the merge improves; batch (the kit's variant): a generation's offspring scored "
                        "together, in parallel")
    s.add_argument("--out", help="write the best model folder(s) + recipe.json here")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--json", action="store_true")


def distill_zoo(d) -> None:
    from ..merging.registry import METHODS
    from ..models.zoo import ZOOS

    d.add_argument("--zoo", choices=sorted(ZOOS), default="multitask")
    d.add_argument("--experts", nargs="+", metavar="NAME", help="distil these experts of the zoo only (default: all)")
    profile(d)
    d.add_argument("--texts", help="unlabeled text to distil on, one per line (default: the experts' training texts)")
    d.add_argument("--init", choices=[m.name for m in METHODS.values() if m.level == "tensor" and m.n_experts is None],
                   help="start the student from this merge of the zoo (default: the base body with the zoo's heads)")
    d.add_argument("--steps", type=int, help="student updates (default: one pass over the texts)")
    d.add_argument("--tau", type=float, default=2.0, help="temperature of teacher and student distributions")
    d.add_argument("--lr", type=float, help="default: the profile's")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--precision", choices=PRECISIONS, default="float32", help=PRECISION_HELP)
    d.add_argument("--json", action="store_true")


def distill(d) -> None:
    d.add_argument("--entities", default="bundled", help="bundled or a path to Entity Inferences JSON lines")
    d.add_argument("--split", choices=["dev", "test"], default="test")
    d.add_argument("--limit", type=int, help="at most this many entities (default: the profile's)")
    d.add_argument("--multi", action="store_true", help="inject all entities into one student (shuffled)")
    profile(d)
    d.add_argument("--model", default="smollm2-135m", help="a bundled causal base, a local folder or a hub id")
    d.add_argument("--lr", type=float)
    d.add_argument("--steps", type=int, help="steps per continuation")
    d.add_argument("--continuations", type=int, help="continuations per entity")
    d.add_argument("--params", help="which parameters train: all, mlp or layers:A-B")
    d.add_argument("--tau", type=float, help="distillation temperature (default 2)")
    d.add_argument("--transfer", choices=["sample", "chat"],
                   help="transfer set: sample (continue the definition, default) or chat (ask the instruct model)")
    d.add_argument("--ft-lr", type=float, help="the fine-tune baseline's own lr (default: --lr)")
    d.add_argument("--ft-steps", type=int, help="the fine-tune baseline's steps under one AdamW (reference: 5-10)")
    d.add_argument("--clip", type=float, help="max gradient norm (0 = none)")
    d.add_argument("--after-mention", action="store_true", help="distil only positions after the entity mention")
    d.add_argument("--no-reset", action="store_true", help="keep one AdamW state across continuations")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true")


def tour(t) -> None:
    profile(t)
    t.add_argument("--only", nargs="*", help="run only notebooks whose file name contains one of these")
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--timeout", type=int, default=1800, help="seconds per cell")


def cache(c) -> None:
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


def stats(s) -> None:
    from ..merging.methods.fisher import VARIANTS

    s.add_argument("kind", choices=["gram", "fisher"], help="gram: RegMean's input Gram matrices; fisher: diagonal Fisher")
    s.add_argument("--model", required=True, metavar="FOLDER", help="the checkpoint (save_pretrained folder or hub id)")
    s.add_argument("--data", required=True, metavar="CSV", help="its training data: text and label columns")
    s.add_argument("--out", required=True, metavar="FILE.safetensors", help="the statistics file to write")
    s.add_argument("--examples", type=int, help="training examples to measure on (default: the measure's own)")
    s.add_argument("--max-length", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--variant", choices=VARIANTS, default="sample", help="fisher: the label of log p(y|x)")
    s.add_argument("--json", action="store_true")
