"""Merge or distil? On the smoke multitask zoo (five MiniLM experts, five label spaces), side by side in one run:
merges (no data, or statistics from the experts' data), the multi-task model (all the labels), and ensemble
distillation of the experts into one student on their training texts without labels - from the base, and from a
TIES merge ("merge, then distil"). Each row: mean test accuracy over the five tasks, its paired interval against
the average merge, what it cost (seconds; steps and texts for the students) and what data it needed.

    .venv/bin/python benchmarks/merge_vs_distil.py [--steps N]
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
from fusionkit.reproduce.merging import correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="student updates (default: one pass over the texts)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("merge-vs-distil.json")))
    args = ap.parse_args()
    fk.setup(0)
    zoo = fk.build_zoo("multitask", "smoke", quiet=True)
    ev = zoo.evaluator("float32")
    rows, per_example = {}, {}

    def add(label, model, seconds, data, extra=None):
        per_example[label] = correct(zoo, ev, model.body, model.heads, "test")
        rows[label] = {"test mean": round(float(sum(c.mean() for c in per_example[label].values()) / len(zoo.tasks)),
                                          4), "seconds": round(seconds, 1), "data": data, **(extra or {})}

    for method, opts, data in [("average", {}, "none"), ("ties", {"density": 0.2}, "none"),
                               ("regmean", {"alpha": 1.0}, "128 unlabeled training texts per expert (Gram)")]:
        t0 = time.perf_counter()
        m = fk.merge_zoo(method, zoo, **opts)
        add(method, m, time.perf_counter() - t0, data)
        if method == "ties":
            ties = m
    t0 = time.perf_counter()
    mt = zoo.multitask_model(quiet=True)
    add("multi-task model", mt, mt.recipe.get("train_seconds", time.perf_counter() - t0),
        f"{mt.recipe['train_examples']} labelled examples", {"steps": mt.recipe["steps"]})
    for label, init in [("distilled from the base", None), ("TIES, then distilled", ties)]:
        s = fk.distill_zoo(zoo, steps=args.steps, init=init, quiet=True)
        c = s.cost
        add(label, s, c["teacher_seconds"] + c["train_seconds"], f"{c['texts']} unlabeled texts",
            {"steps": c["steps"], "kl first/last": [s.trace[0]["kl"], s.trace[-1]["kl"]]})
    for label in rows:
        if label != "average":
            iv = paired_bootstrap(per_example[label], per_example["average"])
            rows[label]["vs average"] = f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}; smoke multitask zoo, 5 tasks x 300 test examples, float32 scoring")
    print("| row | test mean | vs average (paired) | seconds | data | steps |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['test mean']:.3f} | {r.get('vs average', '')} | {r['seconds']} | {r['data']} | "
              f"{r.get('steps', '')} |")
    Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
