"""Diagonal-Fisher accumulation: float64 per tensor (the kit before 2026-12-03) against one fused float32
``addcmul`` per example (the kit), side by side on the same per-example gradients of a real expert.

Per example the Fisher needs a forward and a backward pass of batch size 1 (the gradient of one log-likelihood);
the accumulation Σ g² is a pass over every parameter, so its floor is a memory pass: reading the gradient and the
sum and writing the sum once, timed here as a fused in-place add of the same tensors.

    .venv/bin/python benchmarks/fisher_accumulation.py [--examples 32]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import fusionkit as fk
from fusionkit.merging.statistics import _examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=32)
    args = ap.parse_args()
    zoo = fk.build_zoo("multitask", "smoke", quiet=True)
    expert = zoo.expert("topic")
    model, tok = expert.load()
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    data = _examples(zoo.train_tasks[expert.name], args.examples, 0)
    f64 = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    f32 = {n: torch.zeros_like(p) for n, p in params.items()}
    bound = {n: torch.zeros_like(p) for n, p in params.items()}
    seconds = {"forward + backward": 0.0, "float64 per tensor (before)": 0.0, "fused float32 (kit)": 0.0,
               "memory pass (floor)": 0.0}
    for row in data:
        t = time.perf_counter()
        batch = tok(row["text"], truncation=True, max_length=zoo.profile.max_length, return_tensors="pt")
        model.zero_grad(set_to_none=True)
        torch.log_softmax(model(**batch).logits[0], -1)[int(row["label"])].backward()
        seconds["forward + backward"] += time.perf_counter() - t
        grads = [params[n].grad for n in params]
        t = time.perf_counter()
        for n, g in zip(params, grads):
            f64[n] += g.double() ** 2
        seconds["float64 per tensor (before)"] += time.perf_counter() - t
        t = time.perf_counter()
        torch._foreach_addcmul_(list(f32.values()), grads, grads)
        seconds["fused float32 (kit)"] += time.perf_counter() - t
        t = time.perf_counter()
        torch._foreach_add_(list(bound.values()), grads)
        seconds["memory pass (floor)"] += time.perf_counter() - t
    worst = max(float((f32[n].double() - f64[n]).abs().max() / f64[n].abs().max().clamp_min(1e-300)) for n in params)
    n_params = sum(p.numel() for p in params.values())
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; expert "
          f"{expert.name}, {n_params / 1e6:.1f}M parameters, {len(data)} examples, max length {zoo.profile.max_length}")
    print("| step | ms per example | × floor |")
    print("|---|---|---|")
    floor = seconds["memory pass (floor)"]
    for name, s in seconds.items():
        print(f"| {name} | {1000 * s / len(data):.1f} | {s / floor:.1f} |")
    print(f"largest difference float32 vs float64 sums, relative to each tensor's largest entry: {worst:.1e}")


if __name__ == "__main__":
    main()
