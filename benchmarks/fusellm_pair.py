"""FuseLLM-style distillation on the heterogeneous pair: SmolLM2-135M (student) learns from Gemma-3-270M (teacher,
another vocabulary) on movie-review sentences, against the student alone and plain fine-tuning on the same text
with the same steps (λ = 1), side by side in one run. Measured: perplexity on held-out review sentences (per
text, paired interval against fine-tuning) and the 45 fact probes (does the student keep what it knew?).
Needs the opt-in Gemma asset: ``fusionkit assets gemma3-270m``.

    .venv/bin/python benchmarks/fusellm_pair.py [--texts 64] [--steps 64] [--lam 0.5]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import numpy as np
import torch

import fusionkit as fk
from fusionkit.core.intervals import paired_bootstrap
from fusionkit.distill.fusellm import fuse_distill
from fusionkit.distill.probes import score_probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("fusellm-pair.json")))
    args = ap.parse_args()
    fk.setup(0)
    student, s_tok = fk.load_base("smollm2-135m")
    teacher, t_tok = fk.load_base("gemma3-270m")
    task = fk.load_task("sentiment")
    train = list(task.data["train"]["text"][: args.texts])
    held = list(task.data["test"]["text"][:100])
    facts = fk.load_facts()

    def measure(model):
        ppl = fk.perplexity(model, s_tok, held, max_length=128)
        acc = float(np.mean([r["correct"] for r in score_probes(model, s_tok, facts)]))
        return np.array(ppl["per_text"]), ppl["perplexity"], acc

    rows, nll = {}, {}
    nll["student alone"], ppl, acc = measure(student)
    rows["student alone"] = {"held-out perplexity": round(ppl, 3), "fact probes": round(acc, 4), "seconds": 0}
    for label, lam in [("fine-tuned on the text (λ = 1)", 1.0), (f"FuseLLM-style, Gemma teacher (λ = {args.lam})",
                                                                    args.lam)]:
        model = copy.deepcopy(student)
        run = fuse_distill(model, s_tok, teacher, t_tok, train, args.steps, lam=lam, k=args.k, lr=args.lr)
        nll[label], ppl, acc = measure(model)
        rows[label] = {"held-out perplexity": round(ppl, 3), "fact probes": round(acc, 4), "seconds": run["seconds"],
                       "aligned share": run["aligned_share"]}
        del model
    ft, fused = list(rows)[1], list(rows)[2]
    iv = paired_bootstrap(nll[fused], nll[ft])  # per-text NLL: negative = the fusion predicts held-out text better
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}; {len(train)} training texts, {args.steps} steps, lr {args.lr}, k {args.k}; "
          f"{len(held)} held-out texts, {len(facts)} fact probes")
    print("| student | held-out perplexity | fact probes | seconds | aligned share |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['held-out perplexity']} | {r['fact probes']:.3f} | {r['seconds']} | "
              f"{r.get('aligned share', '')} |")
    print(f"per-text NLL, fused − fine-tuned: {iv['diff']:+.4f} [{iv['lo']:+.4f}, {iv['hi']:+.4f}] over {iv['n']}")
    Path(args.out).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows,
                                          "nll_fused_minus_finetuned": iv}, indent=2))


if __name__ == "__main__":
    main()
