"""What each ``fusionkit`` command does: one function per command, given the parsed arguments, returning the exit
status. Heavy imports sit inside each command, so a command loads only what it uses."""
from __future__ import annotations

import json

from ..core.errors import FusionkitError
from ..core.runtime import quiet_transformers


def assets(args) -> int:
    from ..data.assets import fetch_all, list_assets

    rows = list_assets() if args.list else fetch_all(args.names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22} {'kind':<17} {'source':<44} {'MB':>6}  cached  {'on disk MB':>10}")
    for r in rows:
        print(f"{r['name'] + (' *' if r['opt_in'] else ''):<22} {r['kind']:<17} {r['source']:<44} {r['size_mb']:>6}  "
              f"{'yes' if r['cached'] else 'no':<6}  {r['disk_mb']:>10}")
    print("MB: the download; on disk: extracted or converted, in the cache (everything there: fusionkit cache list)")
    for r in rows:
        if r["opt_in"]:
            print(f"* opt-in, fetched only when named (fusionkit assets {r['name']}) or loaded: {r['description']}")
    return 0


def zoo(args) -> int:
    from ..models.zoo import build_zoo

    quiet_transformers()
    zoo = build_zoo(args.name, args.profile, seed=args.seed, quiet=args.json)
    data = zoo.to_dict(zoo.evaluator(args.precision))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    tasks = list(data["tasks"])
    metric = "test accuracy" if data["metric"] == "accuracy" else "test log-likelihood per token (nats)"
    print(f"zoo {data['zoo']} ({data['profile']}): {metric}, expert x task (* = own task), "
          f"scored in {data['precision']}")
    print(f"{'expert':<28}" + "".join(f"{t:>14}" for t in tasks))
    for e in data["experts"]:
        cells = "".join(f"{e['scores'][t]['test']:>13.3f}{'*' if e['task'] == t else ' '}" for t in tasks)
        print(f"{e['name']:<28}{cells}")
    if all(data["tasks"][t]["chance"] is not None for t in tasks):
        print(f"{'chance (majority class)':<28}" + "".join(f"{data['tasks'][t]['chance']:>13.3f} " for t in tasks))
    return 0


def list_methods(args) -> int:
    from ..merging.registry import describe_methods

    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        needs = ", ".join(filter(None, ["base" if r["needs_base"] else "", r["stats"] and f"{r['stats']} stats",
                                        r["n_experts"] and f"exactly {r['n_experts']} experts",
                                        r["level"] == "zoo" and "a zoo and its data",
                                        r["level"] == "task" and "experts of distinct tasks; one model per task"]))
        print(f"{r['method']:<16} {r['summary']}" + (f"  [needs {needs}]" if needs else ""))
        for k, o in r["options"].items():
            print(f"{'':<18}--{k} (default {o['default']!r}): {o['help']}")
    print("each method's options and reference: fusionkit merge METHOD --help")
    return 0


def merge(args) -> int:
    if getattr(args, "config", None):
        return _merge_config(args)
    if args.list or not args.method:
        return list_methods(args)
    from ..merging.registry import get_method
    from ..merging.statedict import ParamFilter
    from ..merging.zoo_merge import merge_report
    from ..models.zoo import build_zoo

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
    per_task = _per_task(method, args.per_task, given) if getattr(args, "per_task", None) else None
    if args.sentence_transformers and (args.models or not args.out):
        raise FusionkitError("--sentence-transformers writes a zoo merge's encoder into --out; fix: add --out DIR, or "
                             "for your own checkpoints call fk.save_sentence_transformers(OUT, NEW_DIR, base=B0)")
    if args.models:
        if per_task:
            raise FusionkitError("--per-task chooses on each zoo task's validation split; fix: merge a zoo, or "
                                 "pass the option's value with --models")
        return _merge_checkpoints(args, given)
    if args.base or args.data or args.eval_all or args.stats:
        raise FusionkitError("--base, --data, --stats and --eval-all go with --models (your own checkpoints); fix: "
                             "add --models A B ...")
    zoo = build_zoo(args.zoo, args.profile, seed=args.seed, quiet=args.json)
    experts = [e.strip() for e in args.experts.split(",")] if args.experts else None
    merged, report = merge_report(args.method, zoo, experts, zoo.evaluator(args.precision), per_task=per_task,
                                  seed=args.seed, **given)
    if args.out:
        from ..data.assets import base_path
        from ..merging.export import save_merged

        save_merged(merged, args.out, overwrite=args.overwrite, base_path=base_path(zoo.base),
                    extra={"zoo": zoo.name, "profile": zoo.profile.name, "scores": report["results"]},
                    sentence_transformers=zoo.base if args.sentence_transformers else False)
        report["out"] = args.out
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    tasks = list(report["results"])
    print(f"{args.method} on zoo {zoo.name} ({zoo.profile.name}), options {report['options']}; heads {report['heads']}")
    lm = report["metric"] != "accuracy"
    print(f"{'test log-likelihood/token' if lm else 'test accuracy':<28}" + "".join(f"{t:>14}" for t in tasks)
          + f"{'mean':>10}")
    rows = [(f"merged ({args.method})", report["results"])]
    rows += [("ensemble (mixture)" if lm else "ensemble (logits)", report["ensemble"])] if report["ensemble"] else []
    rows += [("multi-task model", report["multitask"])] if report["multitask"] else []
    rows += [(f"expert {n}", s) for n, s in report["experts"].items()]
    rows += [] if any(report["chance"][t] is None for t in tasks) else [("chance", None)]
    for label, scores in rows:
        vals = [report["chance"][t] if scores is None else scores[t]["test"] for t in tasks]
        print(f"{label:<28}" + "".join(f"{v:>14.3f}" for v in vals) + f"{sum(vals) / len(vals):>10.3f}")
    if "storage" in report:
        st = report["storage"]
        print(f"one model per task: a shared vector of {st['shared_bytes'] / 1e6:.1f} MB plus "
              f"{st['per_task_bytes'] / 1e6:.2f} MB per task ({st['per_task_fraction_of_expert']:.1%} of an expert); "
              f"{st['total_bytes'] / 1e6:.1f} MB in all against {st['experts_bytes'] / 1e6:.1f} MB for the experts")
    for note in report["notes"]:
        print("note:", note)
    if args.out:
        print(f"saved to {args.out}" + (f" (SentenceTransformer loads {args.out}/sentence-transformers)"
                                          if args.sentence_transformers else ""))
    return 0


def _merge_config(args) -> int:
    """``fusionkit merge --config FILE.yml --out DIR``: a mergekit config run by the kit on the folders it names."""
    from ..merging.checkpoint_merge import merge_checkpoints
    from ..merging.mergekit_import import from_mergekit

    if getattr(args, "method", None):
        raise FusionkitError("--config names its own method; fix: drop the METHOD argument")
    if not args.config_out:
        raise FusionkitError("--config writes a model folder; fix: add --out DIR")
    plan = from_mergekit(args.config)
    quiet_transformers()
    options = dict(plan["options"], **({"weights": plan["weights"]} if plan["weights"] else {}))
    report = merge_checkpoints(plan["method"], plan["models"], args.config_out, base=plan["base"],
                               data=args.config_data, overwrite=args.config_overwrite, **options)
    report["config"] = {"file": str(args.config), **plan}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.config}: {plan['method']} {report['options']} of {len(plan['models'])} models -> "
              f"{args.config_out} ({report['seconds']} s)")
        for note in report["notes"]:
            print("note:", note)
    return 0


def _per_task(method, spec: str, given: dict) -> tuple[str, list]:
    """``--per-task lam=0.2,0.4`` -> ``("lam", [0.2, 0.4])``, each value of the option's own type."""
    name, _, values = spec.partition("=")
    name = name.strip().replace("-", "_")
    if name not in method.options or name == "seed":
        raise FusionkitError(f"--per-task {spec!r}: {method.name} has no option {name!r}; fix: one of "
                             f"{', '.join(k for k in method.options if k != 'seed')}, as OPTION=V1,V2,...")
    if name in given:
        raise FusionkitError(f"--per-task chooses {name} per task; fix: drop --{name.replace('_', '-')}")
    kind = type(method.options[name].default)
    try:
        parsed = [kind(v) for v in values.split(",") if v.strip()]
    except ValueError as err:
        raise FusionkitError(f"--per-task {spec!r}: {err}; fix: {kind.__name__} values, e.g. {name}=0.2,0.4") from err
    if not parsed:
        raise FusionkitError(f"--per-task {spec!r} gives no values; fix: {name}=V1,V2,...")
    return name, parsed


def _merge_checkpoints(args, given: dict) -> int:
    from ..merging.checkpoint_merge import merge_checkpoints

    if args.experts:
        raise FusionkitError("--experts picks zoo experts; with --models pass the folders themselves")
    if not args.out:
        raise FusionkitError("merging checkpoints writes a model folder; fix: add --out DIR")
    if args.eval_all and not args.data:
        raise FusionkitError("--eval-all scores every row of --data; fix: add --data FILE")
    report = merge_checkpoints(args.method, args.models, args.out, base=args.base, data=args.data,
                               overwrite=args.overwrite, seed=args.seed, precision=args.precision,
                               eval_all=args.eval_all, stats_files=args.stats, **given)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.method} of {', '.join(i['name'] for i in report['inputs'])} -> {args.out} "
          f"({report['seconds']} s), options {report['options']}")
    scores = report["scores"]
    if scores:
        metric = scores["metric"]
        print(f"{'':<28}{metric:>12}   merged minus this (95% paired interval)")
        for name, s in scores["systems"].items():
            d = s.get("merged_minus_this")
            diff = f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else ""
            print(f"{name:<28}{s[metric]:>12.4f}   {diff}")
        if scores["chance"] is not None:
            print(f"{'chance':<28}{scores['chance']:>12.4f}")
    for note in report["notes"]:
        print("note:", note)
    return 0


def search(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from ..models.zoo import build_zoo
    from ..search.dfwe import dfwe_report
    from ..search.evolver import evolve_report
    from ..search.protocol import check_search_options

    quiet_transformers()
    if args.method == "dfwe":  # bad options fail before the zoo is built
        check_search_options(budget=args.budget, optimizer=args.optimizer)
    else:
        check_search_options(F=args.F, CR=args.CR)
    zoo = build_zoo(args.zoo or ("transfer" if args.method == "dfwe" else "multitask"), args.profile, seed=args.seed,
                    quiet=args.json)
    if args.experts:
        zoo = zoo.subset(args.experts)
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
        from ..data.assets import base_path
        from ..merging.export import save_merged

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


def distill(args) -> int:
    from ..core.runtime import seed_everything
    from ..data.assets import load_base
    from ..distill import format_table, load_entities, load_facts, run, settings

    quiet_transformers()
    cfg = settings(args.profile, limit=args.limit, lr=args.lr, steps=args.steps, continuations=args.continuations,
                   params=args.params, tau=args.tau, clip=args.clip, seed=args.seed, transfer=args.transfer,
                   ft_lr=args.ft_lr, ft_steps=args.ft_steps,
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


def distill_zoo(args) -> int:
    from ..distill.ensemble import distill_report, refuse_lm_zoo
    from ..merging.zoo_merge import merge_zoo
    from ..models.perplexity import read_texts
    from ..models.zoo import LM_ZOOS, build_zoo

    quiet_transformers()
    if args.zoo in LM_ZOOS:  # before minutes of building it
        refuse_lm_zoo(args.zoo)
    texts = read_texts(args.texts) if args.texts else None  # a bad file fails before the zoo is built
    zoo = build_zoo(args.zoo, args.profile, seed=args.seed, quiet=args.json)
    if args.experts:
        zoo = zoo.subset(args.experts)
    init = merge_zoo(args.init, zoo, seed=args.seed) if args.init else None
    report = distill_report(zoo, zoo.evaluator(args.precision), init=init, texts=texts, steps=args.steps,
                            tau=args.tau, lr=args.lr, seed=args.seed, quiet=args.json)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    c = report["cost"]
    print(f"ensemble distillation of zoo {zoo.name} ({len(zoo.experts)} experts, {args.profile}) from "
          f"{report['start']['from']}: {c['steps']} steps on {c['texts']} texts; KL {report['kl_first']:.4f} -> "
          f"{report['kl_last']:.4f} (mean of the first / last {report['kl_window']} steps); teacher {c['teacher_seconds']:.0f} s, training {c['train_seconds']:.0f} s")
    tasks = list(report["student"])
    print(f"{'test accuracy':<34}" + "".join(f"{t:>14}" for t in tasks) + f"{'mean':>9}")
    for label, scores in (("student", report["student"]), (f"start: {report['start']['from']}",
                                                          report["start"]["scores"])):
        vals = [scores[t]["test"] for t in tasks]
        print(f"{label:<34}" + "".join(f"{v:>14.3f}" for v in vals) + f"{sum(vals) / len(vals):>9.3f}")
    print(f"saved in the cache: {report['path']}")
    return 0


def tour(args) -> int:
    from ..tour import format_table, run_tour

    out, rows = run_tour(args.profile, only=args.only, out=args.out, timeout=args.timeout)
    print(format_table(rows))
    print(f"executed notebooks, HTML and recorded numbers: {out}")
    return 0 if all(r["status"] == "ok" for r in rows) and rows else 1


def cache(args) -> int:
    from ..core import inventory
    from ..core.cache import cache_root

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


def stats(args) -> int:
    """``fusionkit stats gram|fisher --model PATH --data CSV --out FILE``: publishable statistics of one model."""
    from ..merging.stats_files import measure_to_file

    quiet_transformers()
    report = measure_to_file(args.kind, args.model, args.data, args.out, examples=args.examples,
                             max_length=args.max_length, seed=args.seed, variant=args.variant)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['kind']} statistics of {report['model']} ({report['tensors']} tensors, "
              f"{report['examples']} examples) -> {report['out']}")
    return 0
