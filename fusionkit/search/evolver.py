"""Evolver (Du et al., Findings of ACL 2024, "Knowledge Fusion By Evolving Weights of Language Models",
arXiv 2406.12208): differential evolution over whole models, selected by the dev score of their merge.

The population is the experts, each one flat vector θᵢ of the evolved tensors - what the head policy
(:mod:`fusionkit.models.heads`) fuses: the bodies, every task keeping a fixed head, or, for experts that share one
label space, the whole models, heads included. One generation makes an offspring per individual:

* mutation   ``current-to-other`` (the reference code)  vᵢ = θᵢ + F(θ_r − θᵢ),  r ≠ i
             ``rand/1`` (classic DE)                     vᵢ = θ_a + F(θ_b − θ_c), a, b, c, i distinct
* crossover  binomial: uᵢⱼ = vᵢⱼ with probability CR, else θᵢⱼ; one random index always comes from vᵢ
* selection  greedy against the parent.
  - with a ``merger`` (the paper's main mode): uᵢ is scored as the merge of the population with uᵢ in slot i
    (average / Fisher / RegMean / TIES ...; statistics measured once, an offspring inherits its slot's);
  - without: uᵢ's own dev score against θᵢ's.

Scale-out and determinism: a generation's offspring are drawn from the generation's population with a seeded
generator and scored together (on the ``executor`` when given), so a seed fixes the run whatever executes it.
With a merger, offspring that each improve the merge are accepted together only if the merge of all of them is
at least as good as the best single one; otherwise only the best single one is - so the merged population's
dev score never falls (one extra evaluation in such generations).

Honesty fix (the paper's reviewers' main point): selection uses dev data only, test is reported once at the end,
and the notebooks always show a coefficient search (:func:`fusionkit.search.dfwe.dfwe`) with the same dev data and
the same number of evaluations beside it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.errors import SearchError
from ..data.tasks import Task
from ..merging.merge import merge
from ..merging.registry import get_method
from ..merging.statedict import flatten, unflatten
from ..merging.statistics import expert_stats
from ..merging.zoo_merge import Merged
from ..models.experts import Expert, check_experts
from ..models.heads import base_state, head_policy
from ..models.scorer import Scorer
from .dfwe import dfwe
from .executors import check_executor, map_ordered
from .protocol import best_single_expert, check_search_options, test_scores, to_merged

MUTATIONS = ("current-to-other", "rand/1")
ACCEPTANCE = ("batch", "sequential")
# The schedule of the authors' released configs: a small F, CR 0.5, 15 generations, offspring visited in random
# order and each accepted at once when the merged population's dev score rises (methods.md, "Corrections").
REFERENCE = {"F": 0.1, "CR": 0.5, "generations": 15, "acceptance": "sequential"}


def mutate(pop: torch.Tensor, i: int, F: float, kind: str, gen: torch.Generator) -> torch.Tensor:
    """The donor vector vᵢ for individual ``i`` of ``pop`` ``[N, D]``."""
    n = pop.shape[0]
    others = [j for j in range(n) if j != i]
    pick = [others[j] for j in torch.randperm(len(others), generator=gen).tolist()]
    if kind == "current-to-other":
        return pop[i] + F * (pop[pick[0]] - pop[i])
    a, b, c = pick[:3]
    return pop[a] + F * (pop[b] - pop[c])


def crossover(parent: torch.Tensor, donor: torch.Tensor, CR: float, gen: torch.Generator) -> torch.Tensor:
    """Binomial crossover; index ``j_rand`` always takes the donor's value (classic DE)."""
    mask = torch.rand(parent.shape, generator=gen) < CR
    mask[torch.randint(parent.numel(), (1,), generator=gen)] = True
    return torch.where(mask, donor, parent)


@dataclass
class Fitness:
    """What a worker runs: a population (merged with ``merger``) or one individual -> mean dev score."""

    scorer: Scorer
    names: list[str]
    like: dict  # name -> a tensor of the right shape (for unflatten)
    merger: str | None = None
    options: dict | None = None
    base: dict | None = None
    stats: list | None = None

    def state(self, vectors: list[torch.Tensor]) -> dict:
        states = [unflatten(v, self.like, self.names) for v in vectors]
        if self.merger is None:
            return states[0]
        return merge(self.merger, states, base=self.base, stats=self.stats, names=self.names, **(self.options or {}))

    def __call__(self, vectors: list[torch.Tensor]) -> float:
        return self.scorer(self.state(vectors))


@dataclass
class EvolveResult:
    options: dict
    history: list[dict]  # per generation: generation, dev, mean, accepted, acceptance, evals, seconds
    population: torch.Tensor
    initial: torch.Tensor  # generation 0: the experts themselves
    fitness: Fitness
    best_index: int | None  # without a merger: the best individual

    @property
    def evaluations(self) -> int:
        return self.history[-1]["evals"]

    def best_state(self) -> dict:
        if self.fitness.merger is None:
            return self.fitness.state([self.population[self.best_index]])
        return self.fitness.state(list(self.population))


def evolve(experts: list[Expert], tasks: dict[str, Task], merger: str | None = "average", F: float = REFERENCE["F"],
           CR: float = REFERENCE["CR"], generations: int = REFERENCE["generations"], mutation: str = "current-to-other",
           executor=None, seed: int = 0,
           heads: dict | None = None, train_tasks: dict[str, Task] | None = None, merger_options: dict | None = None,
           stats_examples: int = 128, max_length: int = 128, batch_size: int = 128,
           dev_examples: int | None = None, precision: str = "float32", callback: Callable[[dict], None] | None = None,
           quiet: bool = False, acceptance: str = REFERENCE["acceptance"]) -> EvolveResult:
    """Evolve ``experts`` for ``generations`` and return the final population and its trace. The defaults are the
    reference code's schedule, :data:`REFERENCE`.

    ``acceptance``: ``"batch"`` (the kit's variant: a generation's offspring are drawn together and scored in
    parallel; several winners are kept together only if their joint merge is at least as good as the best single
    one) or ``"sequential"`` (the reference code: individuals visited in a seeded random order, each offspring
    drawn from the population as it stands and accepted at once if it raises the dev score; inherently serial, so
    the executor is not used). :data:`REFERENCE` is the reference's whole schedule.

    ``tasks``: the dev tasks (mean dev score over them is the fitness). ``heads[task]``: the fixed head per task
    (default: the head policy - each task's first expert's head, or heads evolved with the bodies when the experts
    share one label space).
    ``train_tasks[expert name]``: the data for Fisher / Gram statistics when the merger needs them (measured in
    float32); ``precision`` is the scoring precision (:class:`~fusionkit.models.scorer.Scorer`).
    """
    check_experts(experts)
    check_search_options(F=F, CR=CR)
    if mutation not in MUTATIONS:
        raise SearchError(f"unknown mutation {mutation!r}; fix: use one of {', '.join(MUTATIONS)}")
    if mutation == "rand/1" and len(experts) < 4:
        raise SearchError(f"rand/1 needs 4 individuals (i, a, b, c distinct), got {len(experts)}; "
                          "fix: use mutation='current-to-other'")
    if generations < 1:
        raise SearchError(f"generations={generations}; fix: generations >= 1")
    if acceptance not in ACCEPTANCE:
        raise SearchError(f"unknown acceptance {acceptance!r}; fix: use one of {', '.join(ACCEPTANCE)}")
    check_executor(executor)
    method = get_method(merger) if merger is not None else None

    states = [e.state_dict() for e in experts]
    policy = head_policy(experts, heads, states)
    policy.require(tasks)
    names = policy.float_names(states[0])
    base = stats = None
    if method is not None and method.needs_base:
        base = base_state(experts[0].recipe["base"], experts[0].recipe["labels"], seed)
    if method is not None and method.stats:
        if train_tasks is None:
            raise SearchError(f"merger {merger} needs {method.stats} statistics; fix: pass train_tasks")
        stats = [expert_stats(e, method.stats, train_tasks[e.name], examples=stats_examples, max_length=max_length,
                              seed=seed) for e in experts]  # measured once; offspring inherit their slot's
    like = {n: states[0][n] for n in names}
    pop = torch.stack([flatten(state, names).float() for state in states])
    initial = pop.clone()
    del states
    scorer = Scorer(experts[0], tasks, policy.heads, max_length=max_length, batch_size=batch_size,
                    dev_examples=dev_examples, precision=precision)
    fitness = Fitness(scorer, names, like, merger, merger_options, base, stats)
    gen = torch.Generator().manual_seed(seed)
    n = pop.shape[0]

    t0 = time.perf_counter()
    if method is None:
        fit = torch.tensor(map_ordered(fitness, [[v] for v in pop], executor))
        evals = n
        entry = {"generation": 0, "dev": round(float(fit.max()), 4), "mean": round(float(fit.mean()), 4)}
    else:
        merged = fitness(list(pop))
        evals = 1
        entry = {"generation": 0, "dev": round(merged, 4), "mean": round(merged, 4)}
    history = [{**entry, "accepted": 0, "acceptance": None, "evals": evals,
                "seconds": round(time.perf_counter() - t0, 2)}]
    if callback is not None:
        callback(history[-1])

    for g in tqdm(range(1, generations + 1), desc=f"evolve ({merger or 'no merger'})", disable=quiet, leave=False):
        if acceptance == "sequential":
            won, scores = [], []
            for i in torch.randperm(n, generator=gen).tolist():
                u = crossover(pop[i], mutate(pop, i, F, mutation, gen), CR, gen)
                if method is None:
                    score = fitness([u])
                    if score > float(fit[i]):
                        pop[i], fit[i] = u, score
                        won.append(i)
                else:
                    score = fitness([u if j == i else pop[j] for j in range(n)])
                    if score > merged:
                        pop[i], merged = u, score
                        won.append(i)
                scores.append(score)
            evals += n
            dev = float(fit.max()) if method is None else merged
            history.append({"generation": g, "dev": round(dev, 4), "mean": round(sum(scores) / n, 4),
                            "accepted": len(won), "acceptance": round(len(won) / n, 3), "evals": evals,
                            "seconds": round(time.perf_counter() - t0, 2)})
            if callback is not None:
                callback(history[-1])
            continue
        offspring = [crossover(pop[i], mutate(pop, i, F, mutation, gen), CR, gen) for i in range(n)]
        if method is None:
            scores = torch.tensor(map_ordered(fitness, [[u] for u in offspring], executor))
            evals += n
            won = (scores > fit).nonzero().flatten().tolist()
            for i in won:
                pop[i], fit[i] = offspring[i], scores[i]
            entry = {"dev": round(float(fit.max()), 4), "mean": round(float(fit.mean()), 4)}
        else:
            def with_(slots):
                return [offspring[i] if i in slots else pop[i] for i in range(n)]
            scores = map_ordered(fitness, [with_({i}) for i in range(n)], executor)
            evals += n
            won = [i for i in range(n) if scores[i] > merged]
            if len(won) > 1:
                together = fitness(with_(set(won)))
                evals += 1
                best_single = max(won, key=lambda i: scores[i])
                if together < scores[best_single]:
                    won = [best_single]
                else:
                    scores = {**dict(enumerate(scores)), -1: together}
            for i in won:
                pop[i] = offspring[i]
            if won:
                merged = scores[-1] if len(won) > 1 else scores[won[0]]
            entry = {"dev": round(merged, 4), "mean": round(sum(scores[i] for i in range(n)) / n, 4)}
        history.append({"generation": g, **entry, "accepted": len(won), "acceptance": round(len(won) / n, 3),
                        "evals": evals, "seconds": round(time.perf_counter() - t0, 2)})
        if callback is not None:
            callback(history[-1])

    options = {"merger": merger, "F": F, "CR": CR, "generations": generations, "mutation": mutation,
               "acceptance": acceptance, "seed": seed,
               "merger_options": merger_options or {}, "experts": [e.name for e in experts]}
    best_index = int(fit.argmax()) if method is None else None
    return EvolveResult(options, history, pop, initial, fitness, best_index)


def evolve_report(zoo, merger: str | None = "average", F: float = REFERENCE["F"], CR: float = REFERENCE["CR"],
                  generations: int = REFERENCE["generations"],
                  mutation: str = "current-to-other", executor=None, seed: int = 0, quiet: bool = False,
                  precision: str = "float32", **options) -> tuple[Merged, dict]:
    """Evolver on a zoo beside its honest baselines, on the same dev data: the plain merge it wraps (generation 0),
    the coefficient search (DFWE, NGOpt on the simplex) with the same number of evaluations, and the best single
    expert. What ``fusionkit search evolve`` prints; returns ``(Merged, report)``.
    """
    profile = zoo.profile
    kw = dict(seed=seed, max_length=profile.max_length, batch_size=profile.eval_batch_size,
              dev_examples=profile.search_examples, quiet=quiet, precision=precision)
    res = evolve(zoo.experts, zoo.tasks, merger, F, CR, generations, mutation, executor, train_tasks=zoo.train_tasks,
                 stats_examples=profile.stats_examples, **kw, **options)
    scorer = res.fitness.scorer
    plain = res.fitness.state(list(res.initial)) if merger else None
    search = dfwe(zoo.experts, zoo.tasks, "NGOpt", res.evaluations, heads=scorer.heads, executor=executor, **kw)
    baselines = {}
    if plain is not None:
        baselines[f"plain {merger} merge"] = test_scores(scorer, plain)
    baselines[f"coefficient search (DFWE, {res.evaluations} evals)"] = test_scores(scorer, search.best_state())
    label, scores = best_single_expert(zoo.experts, scorer)
    baselines[label] = scores
    state = res.best_state()
    report = {"method": "evolve", "zoo": zoo.name, "profile": profile.name, "options": res.options,
              "history": res.history, "best": test_scores(scorer, state), "evaluations": res.evaluations,
              "baselines": baselines, "dev_examples": profile.search_examples}
    return to_merged("evolve", res.options, state, scorer, zoo.experts), report
