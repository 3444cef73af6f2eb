"""Merges at memory speed: streamed SmolLM2-135M merges (safetensors in, safetensors out) against the copy bound.

Three experts - benchmarks/make_checkpoints.py's SmolLM2-135M variants, each 4 AdamW steps from the base on a
different corpus (made here if missing) - merged by ``merge_files`` with linear (average), task arithmetic, TIES,
DARE-TIES and DELLA, each run in its own process:

* **time**: ``merge_files`` alone (interpreter start-up and imports excluded, and the fused kernels' JIT start-up
  - numba's import and cached-kernel load, once per process - timed apart), best of ``--repeats``, against the
  copy bound - the bytes the merge reads (every input file once) at the throughput of a plain large-tensor copy
  measured in the same run. Inputs are read once first (warm page cache) and the output goes to ``--out`` (default
  /dev/shm: a file write at memory speed, so the fsync that ``merge_files`` does costs nothing; a disk adds its own
  write time, measured here as one fsynced write of the output's size).
* **memory**: the process's peak resident memory (VmHWM) and its peak above the process after imports,
  against the reference one model + one tensor per input (the output's size + the largest tensor, once per input).

Goals (issue 17): time within 3x the copy bound for linear and task arithmetic, 6x for TIES; TIES's peak at most
1.3x linear's.

    .venv/bin/python benchmarks/merge_speed.py [/tmp/fk-bench] [--repeats 3] [--threads N] [--before DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from make_checkpoints import smollm
from mergekit_compare import copy_throughput

EXPERTS = ("author", "sentiment", "topic")
METHODS = {  # label: method, options (TIES and DARE keep 30% of each task vector, as mergekit_compare's TIES)
    "linear": ("average", {}),
    "task_arithmetic": ("task_arithmetic", {"lam": 0.5}),
    "ties": ("ties", {"density": 0.3, "lam": 1.0}),
    "dare_ties": ("dare", {"p": 0.7, "then": "ties", "lam": 1.0}),
    "della": ("della", {"density": 0.5, "epsilon": 0.15, "lam": 1.0}),
}
GOALS = {"linear": 3, "task_arithmetic": 3, "ties": 6}

CHILD = """
import json, sys, time
a = json.loads(sys.argv[1])
import torch
if a["threads"]:
    torch.set_num_threads(a["threads"])
from fusionkit.merging.merge import merge_files
from fusionkit.merging.registry import get_method

def status(key):  # this process's own memory in MB; VmHWM is its peak since exec (ru_maxrss also counts the parent)
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

base = a["base"] if get_method(a["method"]).needs_base else None
jit = 0.0
if a["method"] in ("average", "task_arithmetic", "ties"):  # methods with a fused CPU kernel: its JIT start-up, once per process, timed apart
    try:  # (a --before tree may predate the kernels)
        from fusionkit.merging.fused import warm
        jit = warm()
    except ImportError:
        pass
after_imports = status("VmRSS")
device = {"device": a["device"]} if a["device"] else {}  # a --before tree may predate device=
t = time.perf_counter()
merge_files(a["method"], a["experts"], a["out"], base=base, **device, **a["options"])
seconds = time.perf_counter() - t
import fusionkit
assert a["source"] is None or fusionkit.__file__.startswith(a["source"]), fusionkit.__file__
print(json.dumps({"seconds": seconds, "peak_mb": status("VmHWM"), "after_imports_mb": after_imports, "jit_s": jit}))
"""


def machine(threads: int) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return {"cpu": model, "cores": os.cpu_count(), "torch threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "load average at start": [round(x, 2) for x in os.getloadavg()]}


def run_child(method: str, options: dict, experts: list[str], base: str, out: str, threads: int,
              device: str | None, source: str | None = None) -> dict:
    """One merge in a fresh process; ``source``: a fusionkit source tree imported instead of this one."""
    args = {"method": method, "options": options, "experts": experts, "base": base, "out": out,
            "threads": threads, "device": device, "source": source}
    env = dict(os.environ, PYTHONPATH=source) if source else None  # run inside it: `python -c` puts the cwd first
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env,
                          cwd=source)
    if done.returncode:
        raise RuntimeError(f"{method} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_tensor_bytes(path: str) -> int:
    """The largest tensor's bytes, from the safetensors header (8-byte length, then JSON with data offsets)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return max(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


def fsynced_write_seconds(n_bytes: int, folder: str) -> float:
    """One plain write of ``n_bytes`` with fsync into ``folder``: what a disk adds to a merge's output."""
    block = bytes(1 << 24)
    with tempfile.NamedTemporaryFile(dir=folder) as f:
        t = time.perf_counter()
        for _ in range(0, n_bytes, len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="/tmp/fk-bench", help="benchmarks/make_checkpoints.py's folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each merge (0: torch's default)")
    ap.add_argument("--device", default=None, help="merge(..., device=): e.g. auto, cuda (default: the CPU)")
    ap.add_argument("--only", help="comma-separated labels of METHODS")
    ap.add_argument("--before", help="a fusionkit source tree to time beside, once per method, e.g. from "
                                     "git archive COMMIT fusionkit | tar -x -C DIR")
    ap.add_argument("--out", default="/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir(),
                    help="folder of the merged file")
    ap.add_argument("--json", default=str(Path(__file__).with_name("merge-speed.json")))
    args = ap.parse_args()
    root = Path(args.root)
    smollm(root)  # the base and three variants, unless already there
    experts = [str(root / "smollm2" / e / "model.safetensors") for e in EXPERTS]
    base = str(root / "smollm2" / "base" / "model.safetensors")
    for path in experts + [base]:  # warm the page cache: the bound and the merges read memory, not the disk
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(args.threads)
    gbps = copy_throughput()
    model_bytes = os.path.getsize(base)
    tensor_bytes = largest_tensor_bytes(base)
    rows = []
    for label, (method, options) in METHODS.items():
        if args.only and label not in args.only.split(","):
            continue
        inputs = experts + ([base] if label != "linear" else [])
        read = sum(os.path.getsize(p) for p in inputs)
        out = str(Path(args.out) / f"fk-merge-speed-{label}.safetensors")
        trees = [(label, None, args.repeats)] + ([(f"{label} (before)", args.before, 1)] if args.before else [])
        for name, source, repeats in trees:
            runs = [run_child(method, options, experts, base, out, args.threads, args.device, source)
                    for _ in range(repeats)]
            os.unlink(out)
            seconds = min(r["seconds"] for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            own = max(r["peak_mb"] - r["after_imports_mb"] for r in runs)
            reference = (model_bytes + len(inputs) * tensor_bytes) / 2**20
            bound = read / 1e9 / gbps
            rows.append({"method": name, "options": options, "GB read": round(read / 1e9, 3),
                         "copy bound s": round(bound, 3), "merge s": round(seconds, 3),
                         "x copy bound": round(seconds / bound, 1), "goal x": None if source else GOALS.get(label),
                         "peak MB": round(peak), "peak above imports MB": round(own),
                         "one model + one tensor per input MB": round(reference),
                         "all runs s": [round(r["seconds"], 3) for r in runs],
                         "JIT start-up s (once per process, not in merge s)": round(max(r.get("jit_s", 0.0)
                                                                                       for r in runs), 3)})
            print(rows[-1], flush=True)
    by = {r["method"]: r for r in rows}
    if "linear" in by and "ties" in by:
        ratio = by["ties"]["peak MB"] / by["linear"]["peak MB"]
        info["ties peak / linear peak"] = round(ratio, 2)
    if args.before:
        info["before"] = f"{args.before}, timed once per method"
    info.update({"copy GB/s": round(gbps, 1), "model MB": round(model_bytes / 2**20),
                 "largest tensor MB": round(tensor_bytes / 2**20), "output folder": args.out,
                 "fsynced write of one model on /tmp, s": round(fsynced_write_seconds(model_bytes, "/tmp"), 2)})
    Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    head = ["method", "GB read", "copy bound s", "merge s", "x copy bound", "goal x", "peak MB",
            "peak above imports MB", "one model + one tensor per input MB"]
    print("\n" + ", ".join(f"{k}: {v}" for k, v in info.items()) + "\n")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join("" if r[h] is None else str(r[h]) for h in head) + " |")


if __name__ == "__main__":
    main()
