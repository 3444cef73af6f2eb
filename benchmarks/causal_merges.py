"""Every registered merge on the causal zoo (four SmolLM2-135M experts on reviews, plot summaries, tweets and
newswire), side by side in one run: mean test log-likelihood per token over the four domains with paired intervals
(over test texts) against the plain average and against the base, each domain's score, merge seconds and what data
the method needed; the base, each expert and the experts' output ensemble (the mixture of their next-token
distributions, four forward passes) as references. Then DFWE and the Evolver on dev log-likelihood, test once.

Methods run at their registered defaults (nothing tuned on test; AdaMerging with --ada-steps of entropy minimisation
on the dev texts). Two-model methods (SLERP, NearSwap) merge the reviews and tweets experts and are compared with the
average of those two on their two domains.

    .venv/bin/python benchmarks/causal_merges.py [--profile smoke] [--only m1,m2] [--ada-steps N]

Writes ``benchmarks/causal-merges-<profile>.json`` and the section "causal merges" of ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

import fusionkit as fk
from fusionkit.core.cache import atomic_write_text
from fusionkit.core.intervals import paired_bootstrap
from fusionkit.merging.registry import METHODS
from fusionkit.reproduce.merging import merged_correct

HERE = Path(__file__).resolve().parent
PAIR = ("reviews", "tweets")


def machine() -> str:
    import os
    import platform

    import torch

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU only ({os.cpu_count()} cores)"
    return f"{platform.machine()}, {dev}, torch {torch.__version__}"


def data_needed(m, profile) -> str:
    n = profile.stats_examples
    return {"gram": f"Gram matrices of {n} training texts per expert",
            "fisher": f"Fisher (LM loss) of {n} training texts per expert"}.get(m.stats) or {
        "regmean_plus": f"Gram matrices of {n} texts per expert, through the merge (one pass per block)",
        "greedy_soup": "dev texts (scores its soups)", "adamerging": "unlabeled dev texts"}.get(m.name, "none")


def interval(a: dict, b: dict) -> str:
    iv = paired_bootstrap(a, b)
    return f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"


def mean(c: dict) -> float:
    return float(np.mean([v.mean() for v in c.values()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--only", help="comma-separated methods (default: every registered one)")
    ap.add_argument("--ada-steps", type=int, default=20, help="AdaMerging steps")
    ap.add_argument("--budget", type=int, default=12, help="DFWE's evaluations (the Evolver gets 2 generations)")
    args = ap.parse_args()
    fk.setup(0)
    t_all = time.perf_counter()
    zoo = fk.build_zoo("causal", args.profile, quiet=True)
    ev = zoo.evaluator("auto")
    domains = list(zoo.tasks)
    experts = {e.task: e.state_dict() for e in zoo.experts}
    theta0 = {n: t for n, t in fk.base_state(zoo.base, None, 0).items() if n in experts[domains[0]]}

    def per_text(state, tasks=domains):
        return {d: ev.correct(zoo.tasks[d], "test", params=state) for d in tasks}

    per = {"base": per_text(theta0), **{f"expert {d}": per_text(s) for d, s in experts.items()}}
    pair_avg = per_text(fk.merge("average", [experts[d] for d in PAIR]), PAIR)
    rows = {k: {"test mean": round(mean(v), 4), "per domain": {d: round(float(x.mean()), 4) for d, x in v.items()}}
            for k, v in per.items()}
    ens = {d: ev.ensemble_score(zoo.tasks[d], "test", [(s, None) for s in experts.values()]) for d in domains}
    rows["output ensemble (4 forward passes)"] = {"test mean": round(float(np.mean(list(ens.values()))), 4),
                                                   "per domain": {d: round(v, 4) for d, v in ens.items()}}
    for name, m in METHODS.items():
        if args.only and name not in args.only.split(","):
            continue
        pair = m.n_experts == 2
        opts = {"steps": args.ada_steps} if name == "adamerging" else {}
        t0 = time.perf_counter()
        merged = fk.merge_zoo(name, zoo, experts=[e.name for e in zoo.experts if e.task in PAIR] if pair else None,
                              evaluator=ev, seed=0, **opts)
        seconds = time.perf_counter() - t0
        c = merged_correct(zoo, ev, merged, "test")
        if pair:  # a merge of two experts is compared on their two domains
            c = {d: c[d] for d in PAIR}
        label = f"{name} ({' + '.join(PAIR)})" if pair else name
        per[label] = c
        rows[label] = {"test mean": round(mean(c), 4), "per domain": {d: round(float(x.mean()), 4) for d, x in c.items()},
                       "seconds": round(seconds, 1), "data": data_needed(m, zoo.profile),
                       "vs average": interval(c, pair_avg if pair else per.get("average", per["base"])),
                       "vs base": interval(c, {d: per["base"][d] for d in c})}
        print(f"{label:<32} {rows[label]['test mean']:.4f}  {seconds:6.1f} s", flush=True)
    kw = dict(max_length=zoo.profile.max_length, batch_size=zoo.profile.eval_batch_size,
              dev_examples=zoo.profile.search_examples, precision="auto", seed=0, quiet=True)
    t0 = time.perf_counter()
    search = fk.dfwe(zoo.experts, zoo.tasks, "NGOpt", args.budget, **kw)
    dfwe_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evolved = fk.evolve(zoo.experts, zoo.tasks, "average", generations=2, **kw)
    evo_s = time.perf_counter() - t0
    for label, state, seconds, extra in (
            (f"DFWE (NGOpt, {args.budget} dev evaluations)", search.best_state(), dfwe_s,
             {"weights": dict(zip(domains, search.best["weights"]))}),
            (f"Evolver (average, {evolved.evaluations} dev evaluations)", evolved.best_state(), evo_s, {})):
        c = per_text(state)
        per[label] = c
        rows[label] = {"test mean": round(mean(c), 4), "per domain": {d: round(float(x.mean()), 4) for d, x in c.items()},
                       "seconds": round(seconds, 1), "data": "dev texts (searched)",
                       "vs average": interval(c, per["average"]) if "average" in per else "",
                       "vs base": interval(c, per["base"]), **extra}
    total = time.perf_counter() - t_all
    result = {"machine": machine(), "profile": args.profile, "seconds": round(total, 1),
              "zoo": f"causal {args.profile}: {len(domains)} SmolLM2-135M experts, "
                     f"{len(next(iter(per['base'].values())))} test texts per domain, scored in {ev.precision}",
              "rows": rows}
    out = HERE / f"causal-merges-{args.profile}.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    write_section(markdown(result, domains), args.profile)
    print(f"wrote {out} ({total:.0f} s)")


def markdown(result: dict, domains: list[str]) -> str:
    lines = [f"### Results ({time.strftime('%Y-%m-%d')}, {result['machine']}; {result['zoo']}; "
             f"{result['seconds']:.0f} s in all)", "",
             "Mean test log-likelihood per token (nats; higher is better; perplexity = exp(−it)), per domain and "
             "over the four; A − B with a 95% paired bootstrap interval over test texts. Two-model rows (SLERP, "
             f"NearSwap: {' + '.join(PAIR)}) are means over those two domains, compared with the average of the same "
             "two experts. TALL masks and EMR keep one model per domain (a mask each): the input's domain must be "
             "known.", "",
             f"| model | mean | {' | '.join(domains)} | vs average | vs base | merge s | data |",
             "|---|---|" + "---|" * len(domains) + "---|---|---|---|"]
    for label, r in sorted(result["rows"].items(), key=lambda kv: -kv[1]["test mean"]):
        cells = " | ".join(f"{r['per domain'][d]:.3f}" if d in r["per domain"] else "-" for d in domains)
        lines.append(f"| {label} | {r['test mean']:.3f} | {cells} | {r.get('vs average', '')} | {r.get('vs base', '')} "
                     f"| {r.get('seconds', '')} | {r.get('data', '')} |")
    return "\n".join(lines)


def write_section(text: str, profile: str) -> None:
    path = HERE / "README.md"
    begin, end = f"<!-- causal_merges_{profile}:begin -->", f"<!-- causal_merges_{profile}:end -->"
    old = path.read_text()
    block = f"{begin}\n{text.strip()}\n{end}"
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S) if begin in old else \
        old.rstrip() + "\n\n## Every merge on the causal zoo (`causal_merges.py`)\n\n" + block + "\n"
    atomic_write_text(path, new)


if __name__ == "__main__":
    main()
