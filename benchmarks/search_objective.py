"""How much does scoring one search candidate cost beyond the forward pass itself?

Three ways to score a DFWE candidate θ(w) = θ₀ + Σ wₖτₖ on the same dev data (the transfer zoo, one run):

* bare     - the live model's forward over the pre-tokenised dev batches, weights already in place (the floor);
* kit      - fusionkit's objective: build θ(w) (only the embedding rows the dev data reaches), run it through
             functional_call on the one live model;
* whole    - the same, but θ(w) built whole, every embedding row included (what the objective did before);
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


def best_of(fns: dict, repeats: int) -> dict:
    """Minimum seconds of each function over ``repeats`` rounds; the functions take turns within a round, so
    a busy machine slows all of them alike and the ratios stay fair."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dev-examples", type=int, default=None, help="default: the profile's search_examples")
    args = ap.parse_args()

    import fusionkit as fk
    from fusionkit.models.evaluator import Evaluator
    from fusionkit.search.interpolation import Candidate, Interpolation
    from fusionkit.models.scorer import Scorer

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

    def naive():
        model = copy.deepcopy(ev.model)
        model.load_state_dict({**model.state_dict(), **space.state(next(it))})
        Evaluator(model, ev.tokenizer, max_length=P.max_length).score(dev_task, "validation")  # tokenises again

    t = best_of({"bare": lambda: ev.score(dev_task, "validation"), "kit": lambda: candidate(next(it)),
                 "whole": lambda: scorer(space.state(next(it))), "naive": naive}, args.repeats)
    bare, kit, whole, naive_s = t["bare"], t["kit"], t["whole"], t["naive"]
    row = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "profile": args.profile, "dev_examples": n_dev, "experts": len(experts),
           "bare_s": round(bare, 4), "kit_s": round(kit, 4), "whole_s": round(whole, 4), "naive_s": round(naive_s, 4),
           "kit_evals_per_s": round(1 / kit, 2), "kit_overhead_vs_bare": round(kit / bare - 1, 3),
           "whole_overhead_vs_bare": round(whole / bare - 1, 3), "naive_over_kit": round(naive_s / kit, 2)}
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
