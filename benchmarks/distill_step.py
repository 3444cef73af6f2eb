"""Seconds per context-distillation step: teacher distributions cached once vs a naive loop that recomputes them.

    python benchmarks/distill_step.py [--steps 6] [--tokens 32]

Both loops train the same student (smollm2-135m, all parameters, AdamW) on the same (definition, continuation);
the only difference is whether the teacher's forward pass on [definition; continuation] runs once (fusionkit) or
before every step (naive). Steps of the two loops are interleaved, so load from other processes hits both alike.
The result is written to ``benchmarks/README.md`` (section "step time").
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from fusionkit import distill as D
from fusionkit.data.assets import load_base
from fusionkit.distill.entities import load_entities
from fusionkit.core.runtime import quiet_transformers, seed_everything

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from distill_full import machine, write_section  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=32, help="continuation length in tokens")
    args = ap.parse_args(argv)
    quiet_transformers()
    seed_everything(0)
    teacher, tok = load_base("smollm2-135m")
    teacher.eval().requires_grad_(False)
    entity = load_entities("bundled", "dev")[0]
    words = f" {entity.name} is known to everyone in the valley, and people often talk about the work" * 4
    cont = tok.decode(tok(words, add_special_tokens=False)["input_ids"][:args.tokens])
    cfg = D.settings("full", steps=1)
    student = {"cached": copy.deepcopy(teacher), "naive": copy.deepcopy(teacher)}
    opt = {k: torch.optim.AdamW(D.select_params(m), lr=cfg.lr, weight_decay=0.0) for k, m in student.items()}
    times = {"cached": [], "naive": [], "teacher once": []}
    t = time.perf_counter()
    target = D.prepare(teacher, tok, entity, [cont], cfg)[0]
    times["teacher once"].append(time.perf_counter() - t)

    def step(name, tgt):
        loss = D.target_kl(student[name], tgt, cfg.tau)
        opt[name].zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(D.select_params(student[name]), cfg.clip)
        opt[name].step()
        return float(loss.detach())

    kl = {"cached": [], "naive": []}
    for i in range(args.steps + 1):  # step 0 is a warm-up, not timed
        t = time.perf_counter()
        kl["cached"].append(step("cached", target))
        dt_c = time.perf_counter() - t
        t = time.perf_counter()
        kl["naive"].append(step("naive", D.prepare(teacher, tok, entity, [cont], cfg)[0]))  # teacher every step
        dt_n = time.perf_counter() - t
        if i:
            times["cached"].append(dt_c)
            times["naive"].append(dt_n)
        print(f"step {i}: cached {dt_c:.2f} s, naive {dt_n:.2f} s", flush=True)
    same = max(abs(a - b) for a, b in zip(kl["cached"], kl["naive"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    text = "\n".join([
        "### Step time: teacher cached vs recomputed every step (smollm2-135m)\n",
        f"Machine: {machine()} (shared with other jobs; steps interleaved so both loops see the same load).",
        f"Definition {len(tok(entity.definition)['input_ids'])} tokens, continuation {target.ids.shape[1]} tokens, "
        f"all parameters, AdamW, median of {args.steps} steps after one warm-up.\n",
        "| loop | seconds per step |", "|---|---|",
        f"| fusionkit (teacher once: {med['teacher once']:.2f} s, then cached) | {med['cached']:.2f} |",
        f"| naive (teacher forward every step) | {med['naive']:.2f} |",
        f"\nRatio naive / cached: **{med['naive'] / med['cached']:.2f}x**. Both loops give the same losses "
        f"(max difference {same:.1e}), so the cache changes cost only.",
    ])
    write_section(text, "step")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
