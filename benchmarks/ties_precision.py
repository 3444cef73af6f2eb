"""TIES in float32 (the kit) against the same merge in float64 (the kit before 2026-12-02), side by side in one run.

On the smoke multitask zoo's five MiniLM bodies, in memory (no file reading): wall time of each, the largest
difference between their merged tensors, and the copy bound - the time to read every input tensor once at the
speed of a plain tensor copy on this machine.

    .venv/bin/python benchmarks/ties_precision.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import fusionkit as fk
from fusionkit import base_state, merge, split_head
from fusionkit.merging.ops import bcast, trim


def ties_float64(bodies, theta0, density):
    """The float64 formulation: τᵢ = θᵢ − θ₀ in float64, trim, elect s = sgn Σ τ̂ᵢ, mean of the agreeing entries."""
    out = {}
    w = torch.ones(len(bodies), dtype=torch.float64)
    for n, b0 in theta0.items():
        if not b0.is_floating_point():
            continue
        taus = torch.stack([trim(b[n].double() - b0.double(), density) for b in bodies])
        weighted = bcast(w, taus[0]) * taus
        sign = torch.sign(weighted.sum(0))
        agree = (torch.sign(taus) == sign) & (taus != 0)
        num, den = (weighted * agree).sum(0), (bcast(w, taus[0]) * agree).sum(0)
        out[n] = (b0.double() + torch.where(den != 0, num / den.clamp_min(1e-30), torch.zeros_like(num))).float()
    return out


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.2)
    args = ap.parse_args()
    zoo = fk.build_zoo("multitask", "smoke", quiet=True)
    prefixes = tuple(zoo.experts[0].recipe["head_prefixes"])
    theta0, _ = split_head(base_state(zoo.base, zoo.experts[0].recipe["labels"], 0), prefixes)
    theta0 = {n: t for n, t in theta0.items() if t.is_floating_point()}
    bodies = [e.body_and_head()[0] for e in zoo.experts]
    inputs = [theta0] + bodies
    gb = sum(t.numel() * t.element_size() for s in inputs for t in s.values()) / 1e9
    copy_s, _ = best_of(lambda: [t.clone() for s in inputs for t in s.values()], args.repeats)
    rows = []
    t64, ref = best_of(lambda: ties_float64(bodies, theta0, args.density), args.repeats)
    t32, kit = best_of(lambda: merge("ties", bodies, base=theta0, density=args.density), args.repeats)
    diff = max(float((kit[n] - ref[n]).abs().max()) for n in ref)
    for label, s in (("TIES float64 (before)", t64), ("TIES float32 (kit)", t32)):
        rows.append((label, s, s / copy_s))
    for method, opts in (("average", {}), ("task_arithmetic", {"lam": 0.4})):
        s, _ = best_of(lambda: merge(method, bodies, base=theta0, **opts), args.repeats)
        rows.append((f"{method} (kit, float64 sums)", s, s / copy_s))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{len(bodies)} experts + base, {gb:.3f} GB of inputs, copy bound {copy_s:.3f} s "
          f"({gb / copy_s:.1f} GB/s); best of {args.repeats}")
    print("| merge | seconds | × copy bound |\n|---|---|---|")
    for label, s, r in rows:
        print(f"| {label} | {s:.2f} | {r:.0f} |")
    print(f"float64 / float32 TIES time: {t64 / t32:.2f}x; largest |float32 − float64| over all tensors: {diff:.1e}")


if __name__ == "__main__":
    main()
