"""fusionkit vs mergekit on the same checkpoints, side by side in one run (run with the benchmark environment).

For linear, task arithmetic, TIES and SLERP, on MiniLM experts and on SmolLM2-135M variants:
* do the output tensors agree (max |difference|, over every tensor)?
* wall time and peak resident memory of each tool, as ratios (each run in its own process);
* the physical limit: bytes read / the throughput of a plain large-tensor copy on this machine.

    .venv-bench/bin/python benchmarks/mergekit_compare.py /tmp/fk-bench
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fusionkit.merging.export import to_yaml

RUNNER = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
          "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
          "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
          "sys.stderr.write(r.stderr[-2000:] if r.returncode else '')")

METHODS = {  # fusionkit method, its options, the equivalent mergekit config pieces
    "linear": ("average", {}, {"merge_method": "linear", "parameters": {"normalize": True}}, {"weight": 1.0}),
    "task_arithmetic": ("task_arithmetic", {"lam": 0.5}, {"merge_method": "task_arithmetic"}, {"weight": 0.5}),
    "ties": ("ties", {"density": 0.3, "lam": 1.0},
             {"merge_method": "ties", "parameters": {"normalize": True}}, {"weight": 1.0, "density": 0.3}),
    "slerp": ("slerp", {"t": 0.3}, {"merge_method": "slerp", "parameters": {"t": 0.3}}, None),
}


def measured(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command run in a fresh child process."""
    out = subprocess.run([sys.executable, "-c", RUNNER, *cmd], capture_output=True, text=True)
    if len(out.stdout.split()) != 3:
        raise RuntimeError(f"{cmd[:3]} could not run: {out.stderr[-2000:]}")
    seconds, kb, rc = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{cmd[:3]} failed: {out.stderr}")
    return float(seconds), int(kb) / 1024


def weights_file(folder: Path) -> Path:
    return folder / "model.safetensors"


def mergekit_yaml(method: str, experts: list[Path], base: Path) -> str:
    _, _, top, per_model = METHODS[method]
    cfg = {**top, "dtype": "float32"}
    if method == "slerp":
        cfg["base_model"] = str(experts[0])
        cfg["models"] = [{"model": str(p)} for p in experts[:2]]
    else:
        cfg["models"] = [{"model": str(p), "parameters": per_model} for p in experts]
        if method != "linear":
            cfg["base_model"] = str(base)
    return to_yaml(cfg) + "\n"


def fusionkit_cmd(method: str, experts: list[Path], base: Path, out: Path) -> list[str]:
    name, opts, _, _ = METHODS[method]
    inputs = experts[:2] if method == "slerp" else experts
    code = ("import sys, json; from fusionkit.merging.merge import merge_files; "
            "a = json.loads(sys.argv[1]); merge_files(a['m'], a['e'], a['o'], base=a['b'], **a['opts'])")
    args = {"m": name, "e": [str(weights_file(p)) for p in inputs], "o": str(out),
            "b": str(weights_file(base)) if name not in ("average", "slerp") else None, "opts": opts}
    return [sys.executable, "-c", code, json.dumps(args)]


def in_memory_cmd(method: str, experts: list[Path], base: Path, out: Path) -> list[str]:
    """The same merge with every input loaded whole first (what streaming avoids)."""
    cmd = fusionkit_cmd(method, experts, base, out)
    cmd[2] = ("import sys, json; from safetensors.torch import load_file, save_file; from fusionkit.merging.merge import merge; "
              "a = json.loads(sys.argv[1]); e = [load_file(p) for p in a['e']]; "
              "b = load_file(a['b']) if a['b'] else None; save_file(merge(a['m'], e, base=b, **a['opts']), a['o'])")
    return cmd


def load_output(folder: Path) -> dict:
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def copy_throughput(n_bytes: int = 1 << 30) -> float:
    """GB/s of copying one large float32 tensor into another (a memory-bandwidth bound)."""
    a = torch.ones(n_bytes // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    t = time.perf_counter()
    for _ in range(3):
        b.copy_(a)
    return 3 * n_bytes / (time.perf_counter() - t) / 1e9


def main(root: Path) -> None:
    gbps = copy_throughput()
    rows = []
    for family in ("minilm", "smollm2"):
        folder = root / family
        base = folder / "base"
        experts = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "base")
        for method in METHODS:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                (tmp / "config.yml").write_text(mergekit_yaml(method, experts, base))
                mk_s, mk_mb = measured([str(Path(sys.executable).parent / "mergekit-yaml"), str(tmp / "config.yml"), str(tmp / "mk"),
                                        "--lazy-unpickle"])
                fk_s, fk_mb = measured(fusionkit_cmd(method, experts, base, tmp / "fk.safetensors"))
                _, whole_mb = measured(in_memory_cmd(method, experts, base, tmp / "whole.safetensors"))
                mk, fk = load_output(tmp / "mk"), load_file(str(tmp / "fk.safetensors"))
                shared = sorted(set(mk) & set(fk))
                diff = max(float((mk[k].float() - fk[k].float()).abs().max()) for k in shared)
                scale = max(float(fk[k].float().abs().max()) for k in shared)
                inputs = (experts[:2] if method == "slerp" else experts) + ([] if method in ("linear", "slerp") else [base])
                read = sum(weights_file(p).stat().st_size for p in inputs)
                rows.append({"family": family, "method": method, "experts": len(inputs) - (method not in ("linear", "slerp")),
                             "tensors compared": f"{len(shared)}/{len(fk)}", "max |diff|": f"{diff:.1e}",
                             "max |w|": round(scale, 2), "fusionkit s": round(fk_s, 2), "mergekit s": round(mk_s, 2),
                             "time ratio fk/mk": round(fk_s / mk_s, 2), "fusionkit MB": round(fk_mb),
                             "mergekit MB": round(mk_mb), "memory ratio fk/mk": round(fk_mb / mk_mb, 2),
                             "fusionkit all-in-memory MB": round(whole_mb),
                             "GB read": round(read / 1e9, 3), "copy-bound s": round(read / 1e9 / gbps, 3)})
                print(rows[-1], flush=True)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"plain tensor copy {gbps:.1f} GB/s\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fk-bench"))
