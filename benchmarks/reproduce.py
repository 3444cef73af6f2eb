"""The reproduction table: each seed paper's claim under its protocol, with a 95% interval and a verdict.

    python benchmarks/reproduce.py --profile smoke [--only merging,dfwe,evolver,distill] [--seeds 3]

Writes ``benchmarks/reproduction.md`` (the table, the dev choices, the DFWE learning curve, the machine and the
time each part took) and ``benchmarks/reproduction.json`` (every row and detail). Every choice is made on dev
data (``fusionkit.reproduce``); test is scored once per chosen system. Cached zoos, statistics and transfer sets
are reused, so a second run costs only the searches and the distillation runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from fusionkit.core.cache import atomic_write_text
from fusionkit.core.runtime import quiet_transformers, seed_everything
from fusionkit.reproduce.table import to_markdown

HERE = Path(__file__).resolve().parent
PARTS = ("merging", "evolver", "dfwe", "distill")
# Entities per part. On 2 CPU cores one single-entity edit with its baselines and specificity probes costs ~13 s
# (SmolLM2-135M, transfer set cached; ~17 s with it) and a dev entity ~40 s (three settings), so the smoke profile
# measures 10 dev and 40 test entities: enough to run the protocol, not to resolve a few points (the full profile
# takes every entity: 35 dev, 129 test, 150 at once where a GPU makes that affordable).
DISTILL_SIZES = {"smoke": {"dev": 10, "test": 40, "multi": 20}, "full": {"dev": None, "test": None, "multi": 150}}
# Search seeds per part. An Evolver seed is ~520 s on 2 CPU cores (76 evaluations under the reference schedule,
# and the same-budget coefficient search): the smoke profile runs one and its interval is the paired bootstrap over
# test examples (the "where seeds are costly"); the full profile runs three. A DFWE seed is ~110 s.
SEEDS = {"smoke": {"evolver": 1, "dfwe": 3}, "full": {"evolver": 3, "dfwe": 3}}


def machine() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    return f"{platform.machine()} ({platform.processor() or 'cpu'}), {dev}, torch {torch.__version__}"


def distill_part(profile: str):
    from fusionkit.data.assets import load_base
    from fusionkit.distill import load_entities, load_facts, settings
    from fusionkit.reproduce.distillation import distill_rows

    size = DISTILL_SIZES[profile]
    model, tok = load_base("smollm2-135m")
    dev = load_entities("bundled", "dev")[:size["dev"]]
    test = load_entities("bundled", "test")[:size["test"]]
    return distill_rows(model, tok, dev, test, load_facts(), settings(profile), profile, multi=size["multi"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke", choices=["smoke", "full"])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {PARTS}")
    ap.add_argument("--seeds", type=int, help="search seeds for DFWE and Evolver (default: SEEDS per profile)")
    ap.add_argument("--curve", help="DFWE learning curve, target examples (default: 32,64,128 smoke; 32..512 full)")
    args = ap.parse_args(argv)
    quiet_transformers()
    seed_everything(0)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; use {PARTS}")
    seeds = {p: tuple(range(args.seeds or n)) for p, n in SEEDS[args.profile].items()}
    out_json = HERE / f"reproduction-{args.profile}.json"
    done = json.loads(out_json.read_text()) if out_json.exists() else {}
    for part in parts:
        t0 = time.perf_counter()
        details = {}
        if part == "merging":
            from fusionkit.reproduce.merging import regmean_rows
            rows = regmean_rows(args.profile)
        elif part == "evolver":
            from fusionkit.reproduce.search import evolver_rows
            rows = evolver_rows(args.profile, seeds["evolver"])
        elif part == "dfwe":
            from fusionkit.reproduce.search import dfwe_curve, dfwe_rows
            rows, details = dfwe_rows(args.profile, seeds["dfwe"])
            sizes = args.curve or ("32,64,128" if args.profile == "smoke" else "32,64,128,256,512")
            details["curve"] = dfwe_curve(args.profile, tuple(int(x) for x in sizes.split(",")),
                                          source_lr=details["source_lr"], known=details.pop("curve_point"))
        else:
            rows, details = distill_part(args.profile)
        done[part] = {"rows": [r.to_dict() for r in rows], "details": details,
                      "seconds": round(time.perf_counter() - t0, 1), "machine": machine(),
                      "date": time.strftime("%Y-%m-%d")}
        atomic_write_text(out_json, json.dumps(done, indent=1, default=str))
        print(f"{part}: {len(rows)} rows in {done[part]['seconds']} s", flush=True)
    write_markdown(args.profile, done)


def write_markdown(profile: str, done: dict) -> None:
    from fusionkit.reproduce.table import Row

    lines = [f"# Reproduction table ({profile} profile)", "",
             "Written by `python benchmarks/reproduce.py --profile " + profile + "`. Each row tests one published "
             "claim \"A beats B\": A − B in accuracy points on the test split with a 95% paired-bootstrap interval "
             "(over test examples or probes; random searches averaged per example over their seeds, the per-seed "
             "differences and their t interval beside it). *reproduces*: the whole interval is above 0 (above "
             "−margin for \"within\" claims); *does not*: below; *inconclusive*: it contains 0. Every setting "
             "in parentheses was chosen on dev data; test was scored once.", ""]
    rows = [Row(**r) for p in PARTS if p in done for r in done[p]["rows"]]
    lines += [to_markdown(rows), "", "## Where the time went", ""]
    lines += [f"- {p}: {done[p]['seconds']:.0f} s on {done[p]['machine']} ({done[p]['date']})" for p in PARTS if p in done]
    curve = done.get("dfwe", {}).get("details", {}).get("curve")
    if curve:
        cols = list(curve[0])
        lines += ["", "## DFWE: test accuracy against the number of target examples (seed 0)", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in curve]
    d = done.get("dfwe", {}).get("details")
    if d:
        lines += ["", f"DFWE search weights per seed: `{json.dumps(d.get('weights'))}`; dev–test correlation of the "
                      f"candidates one search evaluated: r = {d.get('dev_test_r')} over {d.get('dev_examples')} dev "
                      "examples."]
    d = done.get("distill", {}).get("details")
    if d:
        lines += ["", "## Distillation: dev choices and the test table", "",
                  "```", json.dumps(d.get("choices"), indent=1), "```", "", "| method | " +
                  " | ".join(k for k in ("explicit_acc", "implicit_acc", "specificity_delta", "specificity_facts_delta",
                                         "specificity_entities_delta", "gap_closed")) + " |", "|---" * 7 + "|"]
        for m, r in d["test"].items():
            lines.append(f"| {m} | " + " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in (
                "explicit_acc", "implicit_acc", "specificity_delta", "specificity_facts_delta",
                "specificity_entities_delta", "gap_closed")) + " |")
    atomic_write_text(HERE / "reproduction.md" if profile == "smoke" else HERE / f"reproduction-{profile}.md",
                      "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
