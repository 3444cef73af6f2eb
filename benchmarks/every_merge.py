"""Every registered merge on the smoke multitask zoo (five MiniLM experts, five label spaces), side by side in one
run: mean test accuracy over the five tasks with its paired interval against the plain average, each task's
accuracy, merge seconds, what data it needed and, for task-specific merges (one model per task), the extra bytes
per task. Methods run at their registered defaults (nothing tuned on test; TALL masks also with λ chosen per task on
validation, AdaMerging with --ada-steps of entropy minimisation on the validation texts). Two-model methods
(SLERP, NearSwap) do not apply to five experts and are listed as such.

    .venv/bin/python benchmarks/every_merge.py [--ada-steps N] [--only m1,m2]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import fusionkit as fk
from fusionkit.core.intervals import paired_bootstrap
from fusionkit.merging.registry import METHODS
from fusionkit.reproduce.merging import correct, merged_correct


def data_needed(m) -> str:
    if m.stats == "gram":
        return "Gram matrices of 128 training texts per expert"
    if m.name == "regmean_plus":
        return "Gram matrices of 128 training texts per expert, measured through the merge (one pass per block)"
    if m.stats == "fisher":
        return "Fisher of 128 labelled training texts per expert"
    if m.name == "greedy_soup":
        return "labelled dev data (scores its soups)"
    if m.name == "adamerging":
        return "unlabeled dev texts"
    return "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ada-steps", type=int, default=60, help="AdaMerging steps (lr 1e-2)")
    ap.add_argument("--only", help="comma-separated methods (default: every registered one)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("every-merge.json")))
    args = ap.parse_args()
    fk.setup(0)
    zoo = fk.build_zoo("multitask", "smoke", quiet=True)
    ev = zoo.evaluator("float32")
    rows, per_example = {}, {}
    runs = []
    for name, m in METHODS.items():
        if args.only and name not in args.only.split(","):
            continue
        if m.n_experts is not None and m.n_experts != len(zoo.experts):
            rows[name] = {"skipped": f"merges exactly {m.n_experts} models; the zoo has {len(zoo.experts)}"}
            continue
        opts = {"steps": args.ada_steps, "lr": 1e-2} if name == "adamerging" else {}
        runs.append((name, name, lambda name=name, opts=opts: fk.merge_zoo(name, zoo, evaluator=ev, **opts), m))
        if name == "tall_masks":
            runs.append(("tall_masks (λ per task on dev)", name, lambda: fk.choose_per_task(
                zoo, "tall_masks", "lam", [0.2, 0.3, 0.4, 0.5, 0.6], ev), m))
    for label, name, make, m in runs:
        t0 = time.perf_counter()
        merged = make()
        seconds = time.perf_counter() - t0
        per_example[label] = merged_correct(zoo, ev, merged, "test")
        c = per_example[label]
        rows[label] = {"test mean": round(float(sum(v.mean() for v in c.values()) / len(c)), 4),
                       "per task": {t: round(float(v.mean()), 4) for t, v in c.items()},
                       "seconds": round(seconds, 1), "data": data_needed(m)}
        if merged.task_models is not None:
            st = merged.task_models.storage()
            rows[label]["extra bytes per task"] = st["per_task_bytes"]
            rows[label]["extra per task, fraction of an expert"] = st["per_task_fraction_of_expert"]
        if isinstance(merged.options.get("lam"), dict):
            rows[label]["chosen"] = merged.options["lam"]
        print(f"{label:<32} {rows[label]['test mean']:.3f}  {seconds:6.1f} s", flush=True)
    mt = zoo.multitask_model(quiet=True)
    per_example["multi-task model"] = correct(zoo, ev, mt.body, mt.heads, "test")
    c = per_example["multi-task model"]
    rows["multi-task model"] = {"test mean": round(float(sum(v.mean() for v in c.values()) / len(c)), 4),
                                "per task": {t: round(float(v.mean()), 4) for t, v in c.items()},
                                "data": f"{mt.recipe['train_examples']} labelled examples (trained)"}
    matrix = zoo.matrix(ev)
    rows["each expert on its own task"] = {
        "test mean": round(sum(matrix[e.name][e.task]["test"] for e in zoo.experts) / len(zoo.experts), 4),
        "data": "five models kept"}
    for label in per_example:
        if label != "average":
            iv = paired_bootstrap(per_example[label], per_example["average"])
            rows[label]["vs average"] = f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"
    if "regmean_plus" in per_example and "regmean" in per_example:  # the paper's claim: ++ above plain RegMean
        iv = paired_bootstrap(per_example["regmean_plus"], per_example["regmean"])
        rows["regmean_plus"]["vs regmean"] = f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    Path(args.out).write_text(json.dumps({"machine": machine, "zoo": "multitask smoke, 5 tasks x 300 test examples",
                                          "rows": rows}, indent=2))
    print(f"machine: {machine}; wrote {args.out}")
    print("| method | mean test | vs average (95% paired) | seconds | data | extra per task |")
    print("|---|---|---|---|---|---|")
    for label, r in sorted(rows.items(), key=lambda kv: -kv[1].get("test mean", -1)):
        if "skipped" in r:
            print(f"| {label} | - | - | - | {r['skipped']} | - |")
            continue
        extra = f"{r['extra bytes per task'] / 1e6:.2f} MB" if "extra bytes per task" in r else ""
        print(f"| {label} | {r['test mean']:.3f} | {r.get('vs average', '')} | {r.get('seconds', '')} | "
              f"{r['data']} | {extra} |")


if __name__ == "__main__":
    main()
