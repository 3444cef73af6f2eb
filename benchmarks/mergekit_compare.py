"""fusionkit vs mergekit on the same checkpoints, side by side in one run (run with the benchmark environment).

For every method both tools have - linear, task arithmetic, TIES, SLERP, Model Stock, Breadcrumbs (± TIES),
DELLA (with its random drops off: density 1), SCE, Karcher, Multi-SLERP, NearSwap - on MiniLM experts and on
SmolLM2-135M variants, mergekit runs the ``mergekit.yml`` the kit itself exports for that merge
(:func:`fusionkit.merging.export.mergekit_config`), so the comparison also checks the export:
* do the output tensors agree (max |difference|, over every tensor)?
* wall time and peak resident memory of each tool, as ratios (each run in its own process);
* the physical limit: bytes read / the throughput of a plain large-tensor copy on this machine.

    .venv-bench/bin/python benchmarks/mergekit_compare.py /tmp/fk-bench [--only ties,sce]
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

from fusionkit.merging.export import mergekit_config, to_yaml
from fusionkit.merging.registry import get_method
from fusionkit.merging.zoo_merge import Merged

RUNNER = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
          "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
          "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
          "sys.stderr.write(r.stderr[-2000:] if r.returncode else '')")

METHODS = {  # label: fusionkit method, its options, how many experts it takes (None: all)
    "linear": ("average", {}, None),
    "task_arithmetic": ("task_arithmetic", {"lam": 0.5}, None),
    "ties": ("ties", {"density": 0.3, "lam": 1.0}, None),
    "slerp": ("slerp", {"t": 0.3}, 2),
    "model_stock": ("model_stock", {}, None),
    "breadcrumbs": ("breadcrumbs", {"density": 0.3, "gamma": 0.01, "lam": 1.0}, None),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"density": 0.3, "gamma": 0.01, "lam": 1.0}, None),
    "della (density 1)": ("della", {"density": 1.0, "epsilon": 0.0, "lam": 1.0}, None),
    "sce": ("sce", {"select_topk": 0.5}, None),
    "karcher": ("karcher", {}, None),
    "multislerp": ("multislerp", {}, None),
    "nearswap": ("nearswap", {"t": 1e-4}, 2),
}


def chosen(label: str, experts: list[Path]) -> list[Path]:
    n = METHODS[label][2]
    return experts[:n] if n else experts

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


def mergekit_yaml(label: str, experts: list[Path], base: Path) -> str:
    """The config the kit exports for this merge (its ``mergekit.yml``)."""
    name, opts, _ = METHODS[label]
    merged = Merged(name, get_method(name).resolve(opts), {}, {}, True,
                    [SimpleNamespace(path=p) for p in chosen(label, experts)])
    config = mergekit_config(merged, str(base))
    if config is None:
        raise RuntimeError(f"{label}: the kit exports no mergekit config for it")
    return to_yaml(config) + "\n"


def fusionkit_cmd(label: str, experts: list[Path], base: Path, out: Path) -> list[str]:
    name, opts, _ = METHODS[label]
    code = ("import sys, json; from fusionkit.merging.merge import merge_files; "
            "a = json.loads(sys.argv[1]); merge_files(a['m'], a['e'], a['o'], base=a['b'], **a['opts'])")
    needs_base = get_method(name).needs_base
    args = {"m": name, "e": [str(weights_file(p)) for p in chosen(label, experts)], "o": str(out),
            "b": str(weights_file(base)) if needs_base else None, "opts": opts}
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


def main(root: Path, only: list[str] | None = None) -> None:
    gbps = copy_throughput()
    rows = []
    for family in ("minilm", "smollm2"):
        folder = root / family
        base = folder / "base"
        experts = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "base")
        for method in [m for m in METHODS if not only or m in only]:
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
                needs_base = get_method(METHODS[method][0]).needs_base
                inputs = chosen(method, experts) + ([base] if needs_base else [])
                read = sum(weights_file(p).stat().st_size for p in inputs)
                rows.append({"family": family, "method": method, "experts": len(inputs) - needs_base,
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
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="/tmp/fk-bench", help="benchmarks/make_checkpoints.py's folder")
    ap.add_argument("--only", help="comma-separated labels of METHODS (default: all)")
    a = ap.parse_args()
    main(Path(a.root), a.only.split(",") if a.only else None)
