"""Coefficient search without gradients: DFWE (Ninalga 2023, "Derivative Free Weight-space Ensembling",
arXiv 2307.03506) with nevergrad.

Few-sample transfer in three steps: experts are trained on source tasks, each is fine-tuned again on a few
target examples (the ``transfer`` zoo), and then a gradient-free optimiser looks for interpolation weights

    θ(w) = θ₀ + Σₖ wₖ (θₖ − θ₀)

that maximise the target's *dev* score. Two labelled parametrisations:

* ``simplex``  w = softmax(z), z free (so wₖ ≥ 0, Σ wₖ = 1 and θ(w) = Σ wₖθₖ - θ₀ drops out);
* ``box``      wₖ ∈ [lo, hi] free (LoraHub's [−1.5, 1.5]): task arithmetic with searched coefficients.

Both start at the uniform average (z = 0, or wₖ = 1/K), which is evaluated first, so the best dev score found
can never be below the uniform soup's. With ``suggest_experts`` (default) each expert alone is evaluated next
(when the budget leaves room for the search after them): a vertex of the simplex is far from the start in logit
space, and without this a short search rarely reaches the one expert that is best on dev - the target-only
fine-tune, typically - so "DFWE ≥ the best single expert on dev" is then a guarantee too. An optional penalty ``l1 · mean|w|`` (LoraHub uses 0.05) is added to
the minimised loss −dev. Any optimiser in ``nevergrad.optimizers.registry`` works by name (NGOpt, CMA, DE,
PSO, OnePlusOne, RandomSearch - the baseline with the same budget ...).

With ``num_workers`` > 1 the optimiser proposes that many candidates at once; they are scored on the
``executor`` (:mod:`fusionkit.search.executors`) and told back in order, so a seed fixes the trace whatever runs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from ..core.errors import SearchError
from ..data.tasks import Task
from ..merging.methods.soups import greedy_soup
from ..merging.zoo_merge import Merged
from ..models.experts import Expert, check_experts
from ..models.heads import head_policy
from ..models.scorer import Scorer
from .executors import check_executor, map_ordered
from .interpolation import Candidate, Interpolation, make_parametrization, vertex
from .protocol import best_single_expert, check_search_options, test_scores, to_merged


@dataclass
class SearchResult:
    method: str
    options: dict
    history: list[dict]  # per evaluation: eval, weights, dev, loss, seconds, cached
    space: Interpolation
    scorer: Scorer

    @property
    def best(self) -> dict:
        """The evaluation with the lowest loss (−dev + penalty); the first one on ties."""
        return min(self.history, key=lambda h: (h["loss"], h["eval"]))

    def best_state(self) -> dict:
        return self.space.state(self.best["weights"])

    def best_so_far(self) -> list[float]:
        out, best = [], -np.inf
        for h in self.history:
            best = max(best, h["dev"])
            out.append(best)
        return out


def dfwe(experts: list[Expert], target: Task | dict[str, Task], optimizer: str = "NGOpt", budget: int = 30,
         parametrization: str = "simplex", l1: float = 0.0, num_workers: int = 1, executor=None, seed: int = 0,
         bounds=(-1.5, 1.5), heads: dict | None = None, max_length: int = 128, batch_size: int = 128,
         dev_examples: int | None = None, precision: str = "float32", callback: Callable[[dict], None] | None = None,
         quiet: bool = False, suggest_experts: bool = True) -> SearchResult:
    """Search interpolation weights of ``experts`` on the dev split of ``target`` with a nevergrad optimiser.

    ``target`` is one task, or several (the mean dev score is maximised). Experts that share one label space
    are interpolated whole, heads included; otherwise only bodies are, and each task uses ``heads[task]``
    (default: the head of the expert trained on it). ``dev_examples`` cuts each dev split; ``precision`` is the
    scoring precision (:class:`~fusionkit.models.scorer.Scorer`). ``callback(entry)`` sees every evaluation (live plots).
    """
    check_experts(experts)
    check_search_options(budget, optimizer)
    if num_workers < 1:
        raise SearchError(f"num_workers={num_workers} must be >= 1")
    check_executor(executor)
    tasks = target if isinstance(target, dict) else {target.name: target}
    policy = head_policy(experts, heads)
    policy.require(tasks)
    names = policy.float_names(experts[0].state_dict())
    space = Interpolation(experts, names, experts[0].recipe["base"], experts[0].recipe["labels"], seed)
    scorer = Scorer(experts[0], tasks, policy.heads, max_length=max_length, batch_size=batch_size,
                    dev_examples=dev_examples, precision=precision)
    fn = Candidate(space, scorer)
    param, to_weights = make_parametrization(parametrization, len(experts), bounds, seed)

    import nevergrad as ng

    opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=num_workers)
    # nevergrad asks its suggestions last-in first-out: suggest each expert alone (module docstring) from the last,
    # then the uniform start, so the start is evaluated first and the experts in order after it.
    vertices = [vertex(parametrization, len(experts), i, bounds) for i in range(len(experts))]
    if suggest_experts and budget > len(experts) + 1 and all(v is not None for v in vertices):
        for v in reversed(vertices):
            opt.suggest(v)
    opt.suggest(param.value)
    history: list[dict] = []
    memo: dict[tuple, tuple[float, float]] = {}
    with tqdm(total=budget, desc=f"dfwe {optimizer}", disable=quiet, leave=False) as bar:
        while len(history) < budget:
            asked = [opt.ask() for _ in range(min(num_workers, budget - len(history)))]
            weights = [to_weights(c.value) for c in asked]
            keys = [tuple(np.round(w, 6)) for w in weights]
            todo = {k: w for k, w in zip(keys, weights) if k not in memo}  # repeats cost nothing
            memo.update(zip(todo, map_ordered(fn, list(todo.values()), executor)))
            for cand, w, key in zip(asked, weights, keys):
                dev, seconds = memo[key]
                loss = -dev + l1 * float(np.abs(w).mean())
                opt.tell(cand, loss)
                entry = {"eval": len(history), "weights": [round(float(x), 6) for x in w], "dev": round(dev, 6),
                         "loss": round(loss, 6), "seconds": round(seconds, 3) if key in todo else 0.0,
                         "cached": key not in todo}
                todo.pop(key, None)  # a repeat inside one batch is a memo hit too
                history.append(entry)
                bar.update()
                bar.set_postfix(dev=f"{entry['dev']:.3f}")
                if callback is not None:
                    callback(entry)
    options = {"optimizer": optimizer, "budget": budget, "parametrization": parametrization, "l1": l1,
               "num_workers": num_workers, "seed": seed, "experts": [e.name for e in experts],
               "suggest_experts": suggest_experts}
    if parametrization == "box":
        options["bounds"] = list(bounds)
    return SearchResult("dfwe", options, history, space, scorer)


PRETRAIN_FINETUNE = "Pretrain→Finetune (target only)"
SOURCE_TARGET = "Source→Target"


def dfwe_baselines(zoo, result: SearchResult, quiet: bool = False) -> dict:
    """DFWE's baselines on the search's own dev data, under FETA's names (Albalak et al. 2022): Pretrain→Finetune
    (the base fine-tuned on the target alone; zoos with one shared-head target), Source→Target (the best
    source→target expert by dev score), the uniform average (the search's start) and the greedy soup.
    ``{label: {"dev", "test": {task: score}}}``."""
    from ..models.zoo import TARGET_ONLY, target_only

    scorer, profile = result.scorer, zoo.profile
    baselines = {}
    if len(zoo.tasks) == 1 and scorer.heads is None:
        alone = next((e for e in zoo.experts if e.name == TARGET_ONLY), None) or \
            target_only(profile, result.options["seed"], quiet)  # the transfer zoo has it in its pool
        baselines[PRETRAIN_FINETUNE] = test_scores(scorer, alone.state_dict())
    sources = [e for e in zoo.experts if e.name != TARGET_ONLY] or zoo.experts
    label, scores = best_single_expert(sources, scorer)
    baselines[label.replace("best single expert", f"{SOURCE_TARGET}, best by dev")] = scores
    baselines["uniform average"] = test_scores(scorer, result.space.state(result.history[0]["weights"]))
    soup, _ = greedy_soup(zoo, scorer.evaluator())  # the search's live model: no second load
    soup_state = {**soup.body, **(soup.heads[next(iter(soup.heads))] if scorer.heads is None else {})}
    baselines[f"greedy soup ({len(soup.options['soup'])} experts)"] = test_scores(scorer, soup_state)
    return baselines


def dfwe_report(zoo, optimizer: str = "NGOpt", budget: int = 30, parametrization: str = "simplex", l1: float = 0.0,
                num_workers: int = 1, executor=None, seed: int = 0, quiet: bool = False, dev_examples: int | None = None,
                **options) -> tuple[Merged, dict]:
    """DFWE on a zoo with every baseline in the same run, on the same dev data (:func:`dfwe_baselines` plus
    random search with the same budget): what ``fusionkit search dfwe`` prints. Returns ``(Merged, report)``.

    Candidates are scored on the target's whole dev split unless ``dev_examples`` cuts it: the gaps a search
    decides between are a few points, and 60 examples carry about ±6 points of noise (√(p(1−p)/n) at p≈0.7)."""
    profile = zoo.profile
    heads = head_policy(zoo.experts).heads
    kw = dict(parametrization=parametrization, l1=l1, seed=seed, heads=heads, max_length=profile.max_length,
              batch_size=profile.eval_batch_size, dev_examples=dev_examples, quiet=quiet, **options)
    result = dfwe(zoo.experts, zoo.tasks, optimizer, budget, num_workers=num_workers, executor=executor, **kw)
    scorer = result.scorer
    baselines = dfwe_baselines(zoo, result, quiet)
    if optimizer != "RandomSearch":
        rand = dfwe(zoo.experts, zoo.tasks, "RandomSearch", budget, num_workers=num_workers, executor=executor, **kw)
        baselines["random search (same budget)"] = test_scores(scorer, rand.best_state())
    best = result.best
    report = {"method": "dfwe", "zoo": zoo.name, "profile": profile.name, "options": result.options,
              "history": result.history, "best": {**test_scores(scorer, result.best_state()), "eval": best["eval"],
                                                  "weights": dict(zip(result.options["experts"], best["weights"]))},
              "baselines": baselines, "dev_examples": len(scorer.tasks[next(iter(scorer.tasks))].data["validation"])}
    return to_merged("dfwe", result.options, result.best_state(), scorer, zoo.experts, best["weights"]), report
