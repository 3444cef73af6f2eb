"""Are the bundled entities' probes fit to measure knowledge propagation?

    python benchmarks/check_entities.py [FILES ...] [--write-keep KEEP.jsonl]

A probe measures propagation only if the model cannot answer it without the definition (near chance) and can
when the definition is read (right with it prepended: the upper bound the edit tries to reach). This script
scores every probe both ways on the distillation base (SmolLM2-135M) and reports, per split and probe type,
the accuracy without the definition against chance (with a binomial 95% interval) and with it prepended. An
entity is *kept* when each of its choice probes is right with the definition prepended; ``--write-keep`` writes
the kept entities' lines (input files are never modified). The figures go to ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from scipy.stats import binomtest

from fusionkit.core.cache import atomic_write_text
from fusionkit.data.assets import load_base
from fusionkit.distill.entities import load_entities
from fusionkit.distill.probes import chance, score_probes


def check(paths) -> tuple[list, dict]:
    entities = load_entities(paths if len(paths) > 1 else paths[0])
    model, tok = load_base("smollm2-135m")
    probes = [p for e in entities for p in e.probes if p.is_choice]
    bare = {r["uid"]: r for r in score_probes(model, tok, probes)}
    read = {r["uid"]: r for r in score_probes(model, tok, probes, {e.name: e.definition for e in entities})}
    return entities, {"bare": bare, "read": read}


def report(entities, rows) -> tuple[str, set]:
    groups = defaultdict(list)
    kept = set()
    split_of = {}
    for e in entities:
        choice = [p for p in e.probes if p.is_choice]
        if choice and all(rows["read"][p.uid]["correct"] for p in choice):
            kept.add(e.name)
        for p in choice:
            split_of[p.uid] = e.split
            groups[(e.split, p.probe_type)].append(p)
    lines = ["| split | probe type | probes | chance | without definition (95% CI) | with definition prepended |",
             "|---|---|---|---|---|---|"]
    for (split, kind), ps in sorted(groups.items()):
        k = sum(rows["bare"][p.uid]["correct"] for p in ps)
        ci = binomtest(k, len(ps)).proportion_ci()
        read = sum(rows["read"][p.uid]["correct"] for p in ps) / len(ps)
        lines.append(f"| {split} | {kind} | {len(ps)} | {chance(ps):.2f} | {k / len(ps):.3f} "
                     f"[{ci.low:.2f}, {ci.high:.2f}] | {read:.3f} |")
    by_split = defaultdict(lambda: [0, 0])
    for e in entities:
        by_split[e.split][0] += 1
        by_split[e.split][1] += e.name in kept
    lines.append("")
    lines.append("Entities whose every probe is right with the definition prepended: " + ", ".join(
        f"{s} {k}/{n}" for s, (n, k) in sorted(by_split.items())) + ".")
    return "\n".join(lines), kept


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", default=["bundled"])
    ap.add_argument("--write-keep", type=Path, help="write the kept entities' lines here (a new file)")
    args = ap.parse_args(argv)
    entities, rows = check(args.files)
    text, kept = report(entities, rows)
    print(text)
    for e in entities:
        if e.name not in kept:
            bad = [p.probe_type for p in e.probes if p.is_choice and not rows["read"][p.uid]["correct"]]
            print(f"  not kept: {e.name} ({e.split}): wrong with the definition on {', '.join(bad)}", file=sys.stderr)
    if args.write_keep:
        if args.write_keep.exists():
            sys.exit(f"{args.write_keep} exists; fix: name a new file (inputs are never overwritten)")
        srcs = [Path(f) for f in args.files] if args.files != ["bundled"] else \
            [Path(__file__).resolve().parent.parent / "fusionkit" / "data" / "entities.jsonl"]
        out = [line for src in srcs for line in src.read_text().splitlines()
               if line.strip() and json.loads(line)["ent_str"] in kept]
        atomic_write_text(args.write_keep, "\n".join(out) + "\n")
        print(f"wrote {len(out)} lines of {len(kept)} entities to {args.write_keep}")


if __name__ == "__main__":
    main()
