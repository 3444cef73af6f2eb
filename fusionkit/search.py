"""Coefficient search without gradients: DFWE (Ninalga 2023, "Derivative Free Weight-space Ensembling",
arXiv 2307.03506) with nevergrad.

Few-sample transfer in three steps: experts are trained on source tasks, each is fine-tuned again on a few
target examples (the ``transfer`` zoo), and then a gradient-free optimiser looks for interpolation weights

    θ(w) = θ₀ + Σₖ wₖ (θₖ − θ₀)

that maximise the target's *dev* score. Two labelled parametrisations:

* ``simplex``  w = softmax(z), z free (so wₖ ≥ 0, Σ wₖ = 1 and θ(w) = Σ wₖθₖ - θ₀ drops out);
* ``box``      wₖ ∈ [lo, hi] free (LoraHub's [−1.5, 1.5]): task arithmetic with searched coefficients.

Both start at the uniform average (z = 0, or wₖ = 1/K), which is evaluated first, so the best dev score found
can never be below the uniform soup's. An optional penalty ``l1 · mean|w|`` (LoraHub uses 0.05) is added to
the minimised loss −dev. Any optimiser in ``nevergrad.optimizers.registry`` works by name (NGOpt, CMA, DE,
PSO, OnePlusOne, RandomSearch - the baseline with the same budget ...).

With ``num_workers`` > 1 the optimiser proposes that many candidates at once; they are scored on the
``executor`` (see :mod:`fusionkit.objective`) and told back in order, so a seed fixes the trace whatever runs it.
"""
from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import stable_hash
from .evaluate import split_head
from .experts import Expert
from .fuse import Merged, base_state, check_experts, shared_label_space
from .objective import PerThread, Scorer, check_executor, map_ordered, timed
from .tasks import Task

PARAMETRIZATIONS = ("simplex", "box")
COMMON_OPTIMIZERS = ("NGOpt", "CMA", "DE", "TwoPointsDE", "PSO", "OnePlusOne", "RandomSearch")


class SearchError(ValueError):
    """A search cannot run with the given inputs or options."""


def check_optimizer(name: str) -> None:
    import nevergrad as ng

    if name not in ng.optimizers.registry:
        close = difflib.get_close_matches(name, list(ng.optimizers.registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SearchError(f"unknown nevergrad optimiser {name!r}{hint}; fix: use one of {', '.join(COMMON_OPTIMIZERS)}"
                          f" or any of the {len(ng.optimizers.registry)} names in nevergrad.optimizers.registry")


def check_search_options(budget: int | None = None, optimizer: str | None = None, F: float | None = None,
                         CR: float | None = None) -> None:
    """Fail before any model is loaded: a budget below 1, an unknown optimiser, F or CR outside (0, 1]."""
    if budget is not None and budget < 1:
        raise SearchError(f"budget={budget}: a search needs at least 1 evaluation; fix: budget >= 1")
    if optimizer is not None:
        check_optimizer(optimizer)
    for name, value in (("F", F), ("CR", CR)):
        if value is not None and not 0 < value <= 1:
            raise SearchError(f"{name}={value} is outside (0, 1]; fix: typical values are F=0.5, CR=0.5")


# ------------------------------------------------------------------------------------------ the search space
_TENSORS: dict[str, tuple[dict, dict]] = {}  # per process: token -> (θ₀, stacked task vectors)
_TENSORS_LOCK = threading.Lock()


@dataclass
class Interpolation(PerThread):
    """θ(w) = θ₀ + Σₖ wₖ(θₖ − θ₀) over ``names``; pickles light (expert paths), loads its tensors once per process.

    The task vectors of each tensor are kept as one ``[K, numel]`` matrix, so θ(w) is one ``addmv`` per tensor
    (a single pass over the K task vectors, no temporaries).
    """

    experts: list[Expert]
    names: list[str]
    base: str
    labels: list[str]
    seed: int = 0
    token: str = field(init=False)

    def __post_init__(self):
        self.token = stable_hash([[e.id for e in self.experts], self.names, self.base, self.labels, self.seed])
        self._local = threading.local()

    def tensors(self) -> tuple[dict, dict]:
        """``(θ₀, τ)``: θ₀ per name, τ per name as a ``[K, numel]`` matrix of the flattened task vectors."""
        with _TENSORS_LOCK:
            if self.token not in _TENSORS:
                if len(_TENSORS) >= 2:  # a notebook switching zoos should not keep every zoo in memory
                    _TENSORS.pop(next(iter(_TENSORS)))
                base = base_state(self.base, self.labels, self.seed)
                states = [e.state_dict() for e in self.experts]
                theta0 = {n: base[n].float() for n in self.names}
                taus = {n: torch.stack([s[n].float().reshape(-1) for s in states]) - theta0[n].reshape(1, -1)
                        for n in self.names}
                _TENSORS[self.token] = (theta0, taus)
            return _TENSORS[self.token]

    def state(self, w) -> dict:
        """θ(w), every tensor whole (what is saved, tested and merged)."""
        theta0, taus = self.tensors()
        w = _as_weights(w)
        return {n: torch.addmv(theta0[n].reshape(-1), taus[n].t(), w).view_as(theta0[n]) for n in self.names}

    def scoring_state(self, w, rows: dict[str, torch.Tensor]) -> dict:
        """θ(w) for *scoring only*: for each ``name -> row ids`` in ``rows`` (an embedding table and the token ids
        the dev data uses) only those rows are built, into this thread's scratch copy of the table; the other rows
        hold stale values that the forward pass never reads. The returned tensors are reused by the next call on
        the same thread: score them at once, never keep them (use :meth:`state` for that)."""
        theta0, taus = self.tensors()
        w = _as_weights(w)
        out = {}
        for n in self.names:
            if n not in rows:
                out[n] = torch.addmv(theta0[n].reshape(-1), taus[n].t(), w).view_as(theta0[n])
                continue
            scratch = getattr(self._local, "scratch", None)
            if scratch is None:
                scratch = self._local.scratch = {}
            if n not in scratch:
                scratch[n] = theta0[n].clone()
            table, idx = theta0[n], rows[n]
            k, width = taus[n].shape[0], table[0].numel()
            picked = taus[n].view(k, table.shape[0], width)[:, idx].reshape(k, -1)
            scratch[n][idx] = torch.addmv(table[idx].reshape(-1), picked.t(), w).view(-1, *table.shape[1:])
            out[n] = scratch[n]
        return out


def _as_weights(w) -> torch.Tensor:
    return torch.as_tensor(np.asarray(w, dtype=np.float32))


@dataclass
class Candidate:
    """The function each worker runs: weights -> (mean dev score, seconds). Only the embedding rows the dev data
    reaches are interpolated (:meth:`Interpolation.scoring_state`): the score is the same, the cost about half."""

    space: Interpolation
    scorer: Scorer

    def __call__(self, w) -> tuple[float, float]:
        return timed(lambda: self.scorer(self.space.scoring_state(w, self.scorer.reachable_rows())))

    def __dask_tokenize__(self):  # dask hashes submitted functions; the token names the space
        return ("fusionkit.Candidate", self.space.token)


def make_parametrization(kind: str, k: int, bounds=(-1.5, 1.5), seed: int = 0):
    """``(nevergrad parameter, value -> weights)``; the parameter's initial value is the uniform average."""
    import nevergrad as ng

    if kind == "simplex":
        param = ng.p.Array(init=np.zeros(k))

        def to_weights(z):
            e = np.exp(z - np.max(z))
            return e / e.sum()
    elif kind == "box":
        lo, hi = bounds
        if not lo < 1 / k < hi:
            raise SearchError(f"box bounds {bounds} must contain the uniform start 1/{k}; fix: widen them")
        param = ng.p.Array(init=np.full(k, 1 / k), lower=lo, upper=hi)

        def to_weights(z):
            return np.asarray(z, dtype=float)
    else:
        raise SearchError(f"unknown parametrization {kind!r}; fix: use one of {', '.join(PARAMETRIZATIONS)}")
    param.random_state = np.random.RandomState(seed)
    return param, to_weights


# ------------------------------------------------------------------------------------------ the search
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
         quiet: bool = False) -> SearchResult:
    """Search interpolation weights of ``experts`` on the dev split of ``target`` with a nevergrad optimiser.

    ``target`` is one task, or several (the mean dev score is maximised). Experts that share one label space
    are interpolated whole, heads included; otherwise only bodies are, and each task uses ``heads[task]``
    (default: the head of the expert trained on it). ``dev_examples`` cuts each dev split; ``precision`` is the
    scoring precision (:class:`~fusionkit.objective.Scorer`). ``callback(entry)`` sees every evaluation (live plots).
    """
    check_experts(experts)
    check_search_options(budget, optimizer)
    if num_workers < 1:
        raise SearchError(f"num_workers={num_workers} must be >= 1")
    check_executor(executor)
    tasks = target if isinstance(target, dict) else {target.name: target}
    shared = shared_label_space(experts) and heads is None
    prefixes = tuple(experts[0].recipe["head_prefixes"])
    state0 = experts[0].state_dict()
    floats = [n for n, t in state0.items() if t.is_floating_point()]
    names = floats if shared else [n for n in floats if n in split_head(state0, prefixes)[0]]
    if not shared and heads is None:
        heads = {}
        for e in experts:
            heads.setdefault(e.task, e.body_and_head()[1])
        missing = sorted(set(tasks) - set(heads))
        if missing:
            raise SearchError(f"no head for task(s) {missing}; fix: pass heads={{task: head_state}}")
    space = Interpolation(experts, names, experts[0].recipe["base"], experts[0].recipe["labels"], seed)
    scorer = Scorer(experts[0], tasks, None if shared else heads, max_length, batch_size, dev_examples,
                    precision=precision)
    fn = Candidate(space, scorer)
    param, to_weights = make_parametrization(parametrization, len(experts), bounds, seed)

    import nevergrad as ng

    opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=num_workers)
    opt.suggest(param.value)  # the uniform start is the first candidate evaluated
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
               "num_workers": num_workers, "seed": seed, "experts": [e.name for e in experts]}
    if parametrization == "box":
        options["bounds"] = list(bounds)
    return SearchResult("dfwe", options, history, space, scorer)


def to_merged(method: str, options: dict, state: dict, scorer: Scorer, experts: list[Expert],
              weights=None) -> Merged:
    """A searched state as a :class:`~fusionkit.fuse.Merged`, so it saves like ``fusionkit merge --out``."""
    prefixes = tuple(experts[0].recipe["head_prefixes"])
    if scorer.heads is None:  # the state carries the (shared) head
        body, head = split_head(state, prefixes)
        heads, shared = {t: head for t in scorer.tasks}, True
    else:
        body, heads, shared = state, dict(scorer.heads), False
    full = split_head(experts[0].state_dict(), prefixes)[0]  # non-float buffers (position ids) come along
    return Merged(method, options, {**full, **body}, heads, shared, experts, weights=weights)


def test_scores(scorer: Scorer, state: dict) -> dict:
    """``{"dev": mean dev score, "test": {task: score}}``: the one look at test a search gets, for its final pick."""
    return {"dev": round(scorer(state), 4), "test": {t: round(s, 4) for t, s in scorer.scores(state, "test").items()}}


def dfwe_baselines(zoo, result: SearchResult, quiet: bool = False) -> dict:
    """DFWE's baselines on the search's own dev data: fine-tuning the base on the target alone (pretrain→finetune;
    zoos with one shared-head target), the best single expert by dev score, the uniform average (the search's
    start), the greedy soup. ``{label: {"dev", "test": {task: score}}}``."""
    from .experts import finetune
    from .fuse import greedy_soup

    scorer, profile = result.scorer, zoo.profile
    baselines = {}
    if len(zoo.tasks) == 1 and scorer.heads is None:
        target = next(iter(zoo.tasks.values()))
        alone = finetune(zoo.base, target, profile, seed=result.options["seed"], name=f"{target.name} (target only)",
                         quiet=quiet, epochs=profile.few_shot_epochs)
        baselines["pretrain→finetune"] = test_scores(scorer, alone.state_dict())
    singles = {e.name: scorer(_expert_state(e, scorer)) for e in zoo.experts}
    best_single = max(singles, key=singles.get)
    baselines[f"best single expert ({best_single})"] = test_scores(scorer, _expert_state(zoo.expert(best_single),
                                                                                        scorer))
    baselines["uniform average"] = test_scores(scorer, result.space.state(result.history[0]["weights"]))
    soup, _ = greedy_soup(zoo, scorer.evaluator())  # the search's live model: no second load
    soup_state = {**soup.body, **(soup.heads[next(iter(soup.heads))] if scorer.heads is None else {})}
    baselines[f"greedy soup ({len(soup.options['soup'])} experts)"] = test_scores(scorer, soup_state)
    return baselines


def dfwe_report(zoo, optimizer: str = "NGOpt", budget: int = 30, parametrization: str = "simplex", l1: float = 0.0,
                num_workers: int = 1, executor=None, seed: int = 0, quiet: bool = False,
                **options) -> tuple[Merged, dict]:
    """DFWE on a zoo with every baseline in the same run, on the same dev data (:func:`dfwe_baselines` plus
    random search with the same budget): what ``fusionkit search dfwe`` prints. Returns ``(Merged, report)``."""
    profile = zoo.profile
    heads = None if shared_label_space(zoo.experts) else zoo.heads()
    kw = dict(parametrization=parametrization, l1=l1, seed=seed, heads=heads, max_length=profile.max_length,
              batch_size=profile.eval_batch_size, dev_examples=profile.search_examples, quiet=quiet, **options)
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
              "baselines": baselines, "dev_examples": profile.search_examples}
    return to_merged("dfwe", result.options, result.best_state(), scorer, zoo.experts, best["weights"]), report


def _expert_state(expert: Expert, scorer: Scorer) -> dict:
    """An expert as the scorer sees it: whole (shared head) or its body (heads given per task)."""
    state = expert.state_dict()
    return state if scorer.heads is None else split_head(state, tuple(expert.recipe["head_prefixes"]))[0]
