"""The full-profile knowledge-propagation table: learning rate chosen on dev entities, reported on test entities.

    python benchmarks/distill_full.py [--lrs 1e-5,3e-5,1e-4] [--dev N] [--test N] [--chunk 2]

1. Sweep: distillation alone on the first ``--dev`` dev entities for each lr; the chosen lr has the best mean of
   explicit and implicit accuracy on dev (ties: lower gold NLL).
2. Test: no update, fine-tuning, distillation and prepend on the test entities with that lr, in chunks; after
   every chunk the table so far is written to ``benchmarks/README.md`` (section "full profile"), so a
   run cut short still leaves honest partial numbers with the number of entities they cover.

Every sweep point and test chunk is saved under the kit cache (``benchmarks/distill_full/``), keyed by its
settings and entities, so a run that is stopped and started again picks up where it left off.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

import torch

from fusionkit import distill as D
from fusionkit.data.assets import load_base
from fusionkit.distill.entities import load_entities, load_facts
from fusionkit.core.runtime import quiet_transformers, seed_everything

OUT = Path(__file__).resolve().parent / "README.md"
MODEL = "smollm2-135m"


def machine() -> str:
    import os

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU only ({os.cpu_count()} cores, torch uses {torch.get_num_threads()} thread(s))"
    return f"{platform.machine()}, {dev}, torch {torch.__version__}"


def write_section(text: str, section: str = "full") -> None:
    """Replace one script's section of the results file (the other sections are left as they are)."""
    from fusionkit.core.cache import atomic_write_text

    BEGIN, END = f"<!-- distill_{section}:begin -->", f"<!-- distill_{section}:end -->"
    old = OUT.read_text() if OUT.exists() else "# Context distillation benchmarks\n"
    block = f"{BEGIN}\n{text.strip()}\n{END}"
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, old, flags=re.S) if BEGIN in old \
        else old.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(OUT, new)


def cached_run(model, tok, entities, facts, cfg, model_id: str = MODEL, **kw) -> dict:
    """``distill.run``, or its saved ``raw``/``seconds`` if this exact run (settings, entities, options) finished
    before; with ``results`` recomputed from ``raw``."""
    from fusionkit.core.cache import cache_dir, read_json, stable_hash, write_json

    key = stable_hash({"cfg": cfg.to_dict(), "entities": [e.name for e in entities], **kw})  # one model here
    path = cache_dir("benchmarks", "distill_full") / f"{key}.json"
    if path.exists():
        saved = {**read_json(path), "cached": True}
    else:
        rep = D.run(model, tok, entities, facts, cfg, model_id=model_id, **kw)
        saved = {"raw": rep["raw"], "seconds": rep["seconds"]}
        write_json(path, saved)
    return {**saved, "results": D.results_from(saved["raw"])}


def table(results: dict) -> str:
    cols = ("explicit_acc", "implicit_acc", "gold_nll", "gap_closed", "specificity_acc", "specificity_delta", "drift")
    rows = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in D.METHODS:
        r = results[m]
        rows.append(f"| {m} | " + " | ".join("-" if r[c] is None else f"{r[c]:.3f}" for c in cols) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4")
    ap.add_argument("--dev", type=int, default=4, help="dev entities for the sweep")
    ap.add_argument("--test", type=int, default=None, help="test entities (default all)")
    ap.add_argument("--chunk", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--multi", default="", help="entity counts for the multi-entity curve, e.g. 1,2,5,10 (none: skip)")
    args = ap.parse_args(argv)
    quiet_transformers()
    seed_everything(args.seed)
    t0 = time.perf_counter()
    model, tok = load_base(MODEL)
    facts = load_facts()
    base = D.settings("full", seed=args.seed)
    lrs = [float(x) for x in args.lrs.split(",")]
    dev = load_entities("bundled", "dev")[:args.dev]
    log = [f"### Full profile: no update / fine-tuning / distillation / prepend (smollm2-135m)\n",
           f"Machine: {machine()}. Settings: {base.continuations} continuations x {base.steps} steps per entity, "
           f"{base.max_new_tokens} new tokens (top-p {base.top_p}), tau {base.tau}, params {base.params}, "
           f"AdamW reset per continuation, clip {base.clip}; specificity on {base.facts} well-known facts plus the "
           f"other entities' probes within a chunk of {args.chunk}; drift on 8 neutral sentences.\n",
           f"#### lr sweep (distillation only, {len(dev)} dev entities)\n", "| lr | explicit | implicit | gold NLL | "
           "seconds |", "|---|---|---|---|---|"]
    sweep, sweep_seconds = {}, []
    for lr in lrs:
        rep = cached_run(model, tok, dev, facts, D.settings("full", lr=lr, seed=args.seed), finetune=False)
        res = rep["results"]
        r = res["distill"]
        if not sweep:
            n = res["no_update"]
            log.append(f"| no update | {n['explicit_acc']:.3f} | {n['implicit_acc']:.3f} | {n['gold_nll']:.3f} | - |")
        sweep_seconds.append(rep["seconds"])
        sweep[lr] = ((r["explicit_acc"] + r["implicit_acc"]) / 2, -r["gold_nll"])
        log.append(f"| {lr:g} | {r['explicit_acc']:.3f} | {r['implicit_acc']:.3f} | {r['gold_nll']:.3f} | "
                   f"{rep['seconds']:.0f} |")
        print(log[-1], flush=True)
        write_section("\n".join(log + [f"\n(sweep running; {time.perf_counter() - t0:.0f} s so far)"]))
    lr = max(sweep, key=sweep.get)
    log.append(f"\nChosen on dev (best mean of explicit and implicit accuracy, then gold NLL): lr = {lr:g}.\n")
    cfg = D.settings("full", lr=lr, seed=args.seed)
    test = load_entities("bundled", "test")[:args.test]
    raw, done, spent = None, 0, sum(sweep_seconds)
    for i in range(0, len(test), args.chunk):
        rep = cached_run(model, tok, test[i:i + args.chunk], facts, cfg)
        raw = rep["raw"] if raw is None else {m: {k: raw[m][k] + rep["raw"][m][k] for k in raw[m]} for m in raw}
        done += len(test[i:i + args.chunk])
        spent += rep["seconds"]
        status = "finished" if done == len(test) else f"PARTIAL: {done} of {len(test)} test entities so far"
        text = "\n".join(log + [f"#### Test entities ({done} of {len(test)}, lr {lr:g}) - {status}\n",
                                table(D.results_from(raw)),
                                f"\nCompute so far (sweep + test, summed over the saved runs): {spent:.0f} s "
                                f"({spent / 60:.1f} min) on {machine()}."])
        write_section(text)
        print(f"{done}/{len(test)} test entities, {spent:.0f} s", flush=True)
    if args.multi:
        spent_curve, rows = [], []

        def runner(*a, **kw):
            rep = cached_run(*a, **kw)
            spent_curve.append(rep["seconds"])
            return rep

        cols = ("explicit_acc", "implicit_acc", "specificity_acc", "specificity_delta", "drift")
        head = [f"\n#### Multi-entity injection (distillation, lr {lr:g}): the first n test entities into one student, "
                "continuations shuffled; specificity on the well-known facts only\n",
                "| entities | " + " | ".join(cols) + " | seconds |", "|---" * (len(cols) + 2) + "|"]
        for n in (int(x) for x in args.multi.split(",")):
            for row in D.multi_entity_curve(model, tok, test, facts, cfg, (n,), MODEL, runner=runner):
                rows.append(f"| {row['n_entities']} | " + " | ".join(f"{row[c]:.3f}" for c in cols) +
                            f" | {spent_curve[-1]:.0f} |")
                print(rows[-1], flush=True)
            write_section("\n".join([text] + head + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
