"""How much does scoring one search candidate cost beyond the forward pass itself?

Three ways to score a DFWE candidate θ(w) = θ₀ + Σ wₖτₖ on the same dev data (the transfer zoo, one run):

* bare     - the live model's forward over the pre-tokenised dev batches, weights already in place (the floor);
* kit      - fusionkit's objective: build θ(w), run it through functional_call on the one live model;
* naive    - deepcopy the model, load_state_dict(θ(w)), tokenise the dev split, forward.

    python benchmarks/search_objective.py [--profile smoke] [--repeats 5] [--dev-examples 60]

Prints seconds per evaluation, evaluations per second and the ratios to bare.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import numpy as np
import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dev-examples", type=int, default=None, help="default: the profile's search_examples")
    args = ap.parse_args()

    import fusionkit as fk
    from fusionkit.evaluate import Evaluator
    from fusionkit.search import Candidate, Interpolation
    from fusionkit.objective import Scorer

    zoo = fk.build_zoo("transfer", args.profile, quiet=True)
    P = zoo.profile
    n_dev = args.dev_examples or P.search_examples
    target = zoo.tasks["sentiment"]
    experts = zoo.experts
    state0 = experts[0].state_dict()
    names = [n for n, t in state0.items() if t.is_floating_point()]
    space = Interpolation(experts, names, experts[0].recipe["base"], experts[0].recipe["labels"])
    scorer = Scorer(experts[0], {"sentiment": target}, max_length=P.max_length, dev_examples=n_dev)
    candidate = Candidate(space, scorer)
    rng = np.random.default_rng(0)
    weights = [rng.dirichlet(np.ones(len(experts))) for _ in range(args.repeats + 1)]
    candidate(weights[0])  # warm up: loads tensors, builds the live model, tokenises dev once
    ev = scorer.evaluator()
    dev_task = scorer.tasks["sentiment"]
    with torch.no_grad():
        ev.model.load_state_dict({**ev.model.state_dict(), **space.state(weights[0])})

    it = iter(weights[1:] * 3)
    bare = best_of(lambda: ev.score(dev_task, "validation"), args.repeats)
    kit = best_of(lambda: candidate(next(it)), args.repeats)

    def naive():
        model = copy.deepcopy(ev.model)
        model.load_state_dict({**model.state_dict(), **space.state(next(it))})
        Evaluator(model, ev.tokenizer, max_length=P.max_length).score(dev_task, "validation")  # tokenises again

    naive_s = best_of(naive, args.repeats)
    row = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "profile": args.profile, "dev_examples": n_dev, "experts": len(experts),
           "bare_s": round(bare, 4), "kit_s": round(kit, 4), "naive_s": round(naive_s, 4),
           "kit_evals_per_s": round(1 / kit, 2), "kit_overhead_vs_bare": round(kit / bare - 1, 3),
           "naive_over_kit": round(naive_s / kit, 2)}
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
