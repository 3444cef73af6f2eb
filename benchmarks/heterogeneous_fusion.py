"""Cool-Fusion of two causal LMs with different vocabularies - SmolLM2-135M (49k byte-level BPE) and Gemma 3 270M
(262k SentencePiece) - against each model alone, side by side in one run. No weight-space merge exists for this
pair (the kit refuses one and points here).

* multiple choice: the bundled well-known-fact probes; each candidate scored per word, by one model or by the
  mean of both (Cool-Fusion's joint scoring);
* generation: the same probes' prefixes ("The capital of France is"), a few words decoded greedily by one model
  (Cool-Fusion with K = 1) or by the fusion; correct when the gold answer appears in the words generated.

Every fused-vs-alone difference has a paired bootstrap interval over the probes. Needs the opt-in Gemma asset:
``fusionkit assets gemma3-270m`` (Gemma Terms of Use).

    .venv/bin/python benchmarks/heterogeneous_fusion.py [--words 4] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import fusionkit as fk
from fusionkit.core.intervals import paired_bootstrap
from fusionkit.distill.cool_fusion import choose, cool_fusion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=4, help="words generated per prompt")
    ap.add_argument("--limit", type=int, help="first N probes only")
    ap.add_argument("--out", default=str(Path(__file__).with_name("heterogeneous-fusion.json")))
    args = ap.parse_args()
    fk.setup(0)
    models = {"SmolLM2-135M": fk.load_base("smollm2-135m"), "Gemma-3-270M": fk.load_base("gemma3-270m")}
    for m, _ in models.values():
        m.eval()
    probes = [p for p in fk.load_facts() if p.is_choice][: args.limit]
    systems = {name: [pair] for name, pair in models.items()}
    systems["Cool-Fusion (both)"] = list(models.values())
    mc, gen, seconds, examples = {}, {}, {}, []
    for name, members in systems.items():
        t0 = time.perf_counter()
        mc[name] = np.array([choose(members, p.prefix, list(p.candidates), p.sep)["choice"] == p.gold_index
                             for p in probes], dtype=float)
        texts = [cool_fusion(members, p.prefix, max_words=args.words)["text"] for p in probes]
        gen[name] = np.array([p.gold.lower() in t.lower() for p, t in zip(probes, texts)], dtype=float)
        seconds[name] = round(time.perf_counter() - t0, 1)
        examples.append({"system": name, **{p.prefix: t for p, t in list(zip(probes, texts))[:3]}})
    fused = "Cool-Fusion (both)"
    rows = {name: {"multiple choice": round(float(mc[name].mean()), 4), "generation": round(float(gen[name].mean()), 4),
                   "seconds": seconds[name]} for name in systems}
    intervals = {f"{fused} − {name}": {"multiple choice": paired_bootstrap(mc[fused], mc[name]),
                                       "generation": paired_bootstrap(gen[fused], gen[name])}
                 for name in models}
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
               f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"machine: {machine}; {len(probes)} fact probes ({len(probes[0].candidates)} choices), {args.words} words")
    print("| system | multiple choice | generation (gold in the words) | seconds |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['multiple choice']:.3f} | {r['generation']:.3f} | {r['seconds']} |")
    for label, iv in intervals.items():
        print(f"{label}: " + "; ".join(f"{k} {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for k, v in iv.items()))
    Path(args.out).write_text(json.dumps({"machine": machine, "probes": len(probes), "words": args.words,
                                          "rows": rows, "intervals": intervals, "examples": examples}, indent=2))


if __name__ == "__main__":
    main()
