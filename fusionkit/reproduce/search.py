"""The searches' claims.

* **DFWE** (Ninalga 2023, arXiv 2307.03506): interpolating source→target experts with weights found by a
  gradient-free optimiser beats FETA's Pretrain→Finetune (the base fine-tuned on the few target examples alone)
  and Source→Target (the best expert). Protocol: the sources are trained gently (their lr chosen on dev from
  :data:`SOURCE_LRS` by the mean dev score of the source→target experts they lead to), the target-only fine-tune is
  in the pool, candidates are scored on the whole dev split, and the dev–test correlation of the evaluated
  candidates says whether dev differences mean anything.
* **Evolver** (Du et al. 2024, arXiv 2406.12208): evolving the population under a merger beats the plain merge,
  under the reference schedule (:data:`fusionkit.search.evolver.REFERENCE`: F 0.1, CR 0.5, 15 generations,
  sequential acceptance), dev-only selection, beside a coefficient search with the same number of evaluations.

Both are random: each row averages the per-example test scores over search seeds and reports the per-seed
differences too (:func:`fusionkit.reproduce.table.compare`).
"""
from __future__ import annotations

import numpy as np

from ..core.profiles import get_profile
from ..models.heads import head_policy
from ..search.dfwe import dfwe
from ..search.evolver import REFERENCE, evolve
from .table import Row, compare

SOURCE_LRS = (2e-4, 5e-5)
DFWE_PAPER = "FETA-Friends dialogue, experts on related source tasks, few-shot target"
EVOLVER_PAPER = "GLUE / emotion experts, merger average|Fisher|RegMean|TIES, 15 iterations"


def choose_source_lr(profile, seed: int = 0, quiet: bool = True) -> tuple[float, dict]:
    """The source lr whose source→target experts score best on the target's dev split (mean over sources)."""
    from ..models.training import finetune
    from ..models.zoo import BASE, transfer_sources, transfer_target

    target = transfer_target(profile, seed)
    dev = {}
    for lr in SOURCE_LRS:
        sources = transfer_sources(profile.with_(source_lr=lr), seed, quiet)
        tuned = [finetune(BASE, target, profile, seed=seed, init=s, name=f"{s.name}>sentiment", quiet=quiet,
                          epochs=profile.few_shot_epochs) for s in sources]
        dev[lr] = round(float(np.mean([e.scores["validation"] for e in tuned])), 4)
    return max(dev, key=dev.get), dev


def _seeds(seeds, kind: str = "") -> str:
    return f"{len(seeds)} {kind}seed{'s' if len(seeds) != 1 else ''}"


def _per_example(scorer, state) -> np.ndarray:
    return scorer.correct(state, "test")["sentiment"]


def dfwe_rows(profile: str = "smoke", seeds=(0, 1, 2), budget: int = 30, quiet: bool = True) -> tuple[list[Row], dict]:
    """DFWE against Pretrain→Finetune and Source→Target. Returns the rows and the run's details (chosen lr, dev
    scores, dev–test correlation, weights per seed)."""
    from ..models.zoo import TARGET_ONLY, build_zoo

    P = get_profile(profile)
    lr, lr_dev = choose_source_lr(P, quiet=quiet)
    zoo = build_zoo("transfer", P.with_(source_lr=lr), quiet=quiet)
    target = zoo.tasks["sentiment"]
    runs, weights, corr = [], {}, None
    for s in seeds:
        res = dfwe(zoo.experts, target, "NGOpt", budget, seed=s, heads=head_policy(zoo.experts).heads,
                   max_length=P.max_length, batch_size=P.eval_batch_size, quiet=True)
        runs.append(_per_example(res.scorer, res.best_state()))
        weights[s] = dict(zip(res.options["experts"], res.best["weights"]))
        if s == seeds[0]:
            first = res
        if corr is None:  # seed 0: every evaluated candidate on test too, only to measure how far dev can be trusted
            fresh = [h for h in res.history if not h["cached"]]
            test = [float(_per_example(res.scorer, res.space.state(h["weights"])).mean()) for h in fresh]
            dev = [h["dev"] for h in fresh]
            corr = round(float(np.corrcoef(dev, test)[0, 1]), 3) if np.std(dev) > 0 and np.std(test) > 0 else None
        scorer = res.scorer
    alone = next(e for e in zoo.experts if e.name == TARGET_ONLY)
    sources = [e for e in zoo.experts if e.name != TARGET_ONLY]
    dev_of = {e.name: scorer(e.state_dict()) for e in sources}
    best = max(dev_of, key=dev_of.get)
    setting = (f"{P.name}: {len(sources)} MiniLM sources ({', '.join(e.name.split('>')[0] for e in sources)}) at lr {lr:g}, each "
               f"tuned on {P.few_shot} sentiment examples, + the target-only model; NGOpt, simplex, {budget} "
               f"evaluations on {len(scorer.tasks['sentiment'].data['validation'])} dev examples")
    choices = {"source lr (mean dev of source→target)": lr_dev, "dev–test r of candidates": corr}
    kw = dict(paper=DFWE_PAPER, setting=setting, profile=P.name, choices=choices, a_seeds=runs)
    label = f"DFWE ({_seeds(seeds, 'search ')})"
    rows = [compare("DFWE > Pretrain→Finetune", label, None, "Pretrain→Finetune",
                    _per_example(scorer, alone.state_dict()), **kw),
            compare("DFWE > Source→Target (best by dev)", label, None, f"Source→Target ({best})",
                    _per_example(scorer, next(e for e in sources if e.name == best).state_dict()), **kw)]
    details = {"source_lr": lr, "source_lr_dev": lr_dev, "dev_test_r": corr, "weights": weights,
               "dev_examples": len(scorer.tasks["sentiment"].data["validation"]),
               # the learning curve's point at this zoo's size is this seed-0 search: kept, not searched again
               "curve_point": _curve_point(zoo, first, P.few_shot) if seeds[0] == 0 else None}
    return rows, details


def _curve_point(zoo, res, n: int) -> dict:
    """One point of the learning curve from a zoo and the seed-0 search on it."""
    from ..models.zoo import TARGET_ONLY

    sc = res.scorer
    sources = [e for e in zoo.experts if e.name != TARGET_ONLY]
    best = max(sources, key=lambda e: sc(e.state_dict()))
    alone = next(e for e in zoo.experts if e.name == TARGET_ONLY)
    return {"target examples": n,
            "DFWE": round(float(_per_example(sc, res.best_state()).mean()), 4),
            "Pretrain→Finetune": round(float(_per_example(sc, alone.state_dict()).mean()), 4),
            "Source→Target (best by dev)": round(float(_per_example(sc, best.state_dict()).mean()), 4),
            "DFWE weight on target-only": round(res.best["weights"][zoo.experts.index(alone)], 3)}


def dfwe_curve(profile: str = "smoke", sizes=(32, 128, 512), budget: int = 30, source_lr: float | None = None,
               seed: int = 0, quiet: bool = True, known: dict | None = None) -> list[dict]:
    """Test accuracy against the number of target examples for DFWE, Pretrain→Finetune and Source→Target (best
    by dev): the curve that makes DFWE's case where targets are few. ``known`` is a point already measured, e.g.
    :func:`dfwe_rows`' ``details["curve_point"]`` (the same zoo and seed-0 search): it is used, not re-run."""
    from ..models.zoo import build_zoo

    out = []
    for n in sizes:
        if known and known["target examples"] == n:
            out.append(known)
            continue
        P = get_profile(profile).with_(few_shot=n, source_lr=source_lr)
        zoo = build_zoo("transfer", P, seed=seed, quiet=quiet)
        res = dfwe(zoo.experts, zoo.tasks["sentiment"], "NGOpt", budget, seed=seed,
                   heads=head_policy(zoo.experts).heads, max_length=P.max_length, batch_size=P.eval_batch_size,
                   quiet=True)
        out.append(_curve_point(zoo, res, n))
    return out


def evolver_rows(profile: str = "smoke", seeds=(0, 1, 2), merger: str = "average", quiet: bool = True) -> list[Row]:
    """Evolver + merger against the plain merge and a same-budget coefficient search, on the multitask zoo."""
    from ..models.zoo import build_zoo

    zoo = build_zoo("multitask", profile, quiet=quiet)
    P = zoo.profile
    kw = dict(max_length=P.max_length, batch_size=P.eval_batch_size, dev_examples=P.search_examples, quiet=True)
    evolved, searched = [], []
    for s in seeds:
        res = evolve(zoo.experts, zoo.tasks, merger, seed=s, train_tasks=zoo.train_tasks,
                     stats_examples=P.stats_examples, **REFERENCE, **kw)
        sc = res.fitness.scorer
        evolved.append(sc.correct(res.best_state(), "test"))
        search = dfwe(zoo.experts, zoo.tasks, "NGOpt", res.evaluations, seed=s, heads=sc.heads, **kw)
        searched.append(sc.correct(search.best_state(), "test"))
        plain = sc.correct(res.fitness.state(list(res.initial)), "test")
        evals = res.evaluations
    setting = (f"{P.name}: the multitask zoo ({len(zoo.experts)} experts, heads kept), merger {merger}, reference "
               f"schedule (F {REFERENCE['F']}, CR {REFERENCE['CR']}, {REFERENCE['generations']} generations, "
               f"{REFERENCE['acceptance']}), {P.search_examples} dev examples per task")
    label = f"Evolver + {merger} ({_seeds(seeds)})"
    common = dict(paper=EVOLVER_PAPER, setting=setting, profile=P.name, a_seeds=evolved)
    return [compare(f"Evolver + {merger} > plain {merger}", label, None, f"plain {merger}", plain, **common),
            compare("Evolver > coefficient search, same budget", label, None,
                    f"DFWE coefficients ({evals} evals, {_seeds(seeds)})", None, b_seeds=searched, **common)]
