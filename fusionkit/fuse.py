"""Merging a zoo's experts into one model: what is merged, which statistics, and how the result scores.

Head policy (RegMean, Jin et al. 2023, §4): experts of *different* tasks (different label spaces) merge their
bodies only, and each task keeps its own head on the merged body; experts that share one label space (the
``partitions`` and ``transfer`` zoos) merge their heads too, with the same method. Methods that need θ₀ get
the base model's body - and, for shared heads, the head every expert started from (experts are fine-tuned
from a seeded head initialisation, so the base head is reproducible from the seed).

Two reference points that are not merges sit beside every merge: each expert alone, and the logit ensemble
(the mean of the experts' logits: N forward passes, the accuracy a merge tries to reach in one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cache import sha256_file
from .evaluate import Evaluator, split_head
from .experts import Expert
from .measure import expert_stats
from .merge import MergeError, get_method, merge
from .weights import ParamFilter, StateDict
from .zoo import Zoo

SPLITS = ("validation", "test")


@dataclass
class Merged:
    """A merged body plus the head used for each task."""

    method: str
    options: dict
    body: StateDict
    heads: dict[str, StateDict]
    heads_merged: bool
    experts: list[Expert]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    weights: object = None  # the coefficients given: None (all 1), a list, or {glob: list}

    def state_for(self, task: str) -> StateDict:
        return {**self.body, **self.heads[task]}


def shared_label_space(experts: list[Expert]) -> bool:
    return all(e.recipe["labels"] == experts[0].recipe["labels"] for e in experts)


def base_state(base: str, labels: list[str], seed: int) -> StateDict:
    """θ₀ as the experts saw it: the pretrained body and the seeded head initialisation."""
    from .assets import load_base

    with torch.random.fork_rng():  # reproduce the experts' head initialisation without touching the caller's RNG
        torch.manual_seed(seed)  # finetune seeds the same way before creating the head
        model, _ = load_base(base, labels=labels)
    return model.state_dict()


def check_experts(experts: list[Expert]) -> None:
    if len(experts) < 2:
        raise MergeError(f"merging needs at least 2 experts, got {len(experts)}")
    bases = {e.recipe["base"] for e in experts}
    if len(bases) > 1:
        raise MergeError(f"experts come from different bases {sorted(bases)}; fix: merge experts of one base")
    tokenizers = {}
    for e in experts:
        path = e.path / "tokenizer.json"
        tokenizers.setdefault(sha256_file(path) if path.exists() else None, e.name)
    if len(tokenizers) > 1:
        a, b = list(tokenizers.values())[:2]
        raise MergeError(f"experts {a!r} and {b!r} use different tokenizers, so their embeddings mean different "
                         "things; fix: merge experts fine-tuned from one base with its tokenizer")


def merge_experts(method: str, experts: list[Expert], train_tasks: dict | None = None, base: str = "minilm",
                  seed: int = 0, weights=None, filter: ParamFilter | None = None, stats_examples: int = 128,
                  max_length: int = 128, fisher_variant: str = "sample", **options) -> Merged:
    """Merge experts' weights with a registered method, following the head policy above.

    ``train_tasks`` maps expert name -> the data it was tuned on (for Gram / Fisher statistics).
    """
    check_experts(experts)
    m = get_method(method)
    if "seed" in m.options:
        options.setdefault("seed", seed)
    t0 = time.perf_counter()
    shared = shared_label_space(experts)
    states = [e.state_dict() for e in experts]
    prefixes = tuple(experts[0].recipe["head_prefixes"])
    names = list(states[0]) if shared else list(split_head(states[0], prefixes)[0])
    base_sd = base_state(base, experts[0].recipe["labels"], seed) if m.needs_base else None
    stats = None
    if m.stats:
        if train_tasks is None:
            raise MergeError(f"{method} measures {m.stats} statistics on each expert's data; fix: pass train_tasks")
        extra = {"variant": fisher_variant} if m.stats == "fisher" else {}
        stats = [expert_stats(e, m.stats, train_tasks[e.name], examples=stats_examples, max_length=max_length,
                              seed=seed, **extra) for e in experts]
    res = merge(method, states, base=base_sd, stats=stats, weights=weights, filter=filter, names=names,
                labels=[e.name for e in experts], report=True, **options)
    body, merged_head = split_head(res.state, prefixes)
    if shared:
        heads = {experts[0].task: merged_head}
    else:
        heads = {}
        for e, s in zip(experts, states):
            heads.setdefault(e.task, split_head(s, prefixes)[1])
    return Merged(method, res.options, body, heads, shared, experts, res.notes, time.perf_counter() - t0, weights)


def merge_zoo(method: str, zoo: Zoo, experts: list[str] | None = None, **options) -> Merged:
    """:func:`merge_experts` on a zoo (all its experts, or those named), with the zoo's profile settings."""
    chosen = [zoo.expert(n) for n in experts] if experts else zoo.experts
    options.setdefault("stats_examples", zoo.profile.stats_examples)
    return merge_experts(method, chosen, zoo.train_tasks, base=zoo.base, max_length=zoo.profile.max_length,
                         **options)


# ------------------------------------------------------------------------------------------------ scores
def score_merged(merged: Merged, zoo: Zoo, evaluator: Evaluator, splits=SPLITS) -> dict:
    """``{task: {split: score}}`` of the merged body with each task's head, on every task it has a head for."""
    return {t: {s: round(evaluator.score(task, s, params=merged.body, head=merged.heads[t]), 4) for s in splits}
            for t, task in zoo.tasks.items() if t in merged.heads}


def ensemble_scores(zoo: Zoo, evaluator: Evaluator, experts: list[Expert] | None = None, splits=SPLITS) -> dict:
    """The logit ensemble: per task, the mean logits of every expert's body with that task's head."""
    experts = experts or zoo.experts
    parts = [e.body_and_head() for e in experts]
    heads = zoo.heads()
    return {t: {s: round(evaluator.ensemble_score(
                task, s, [(body, own if e.task == t else heads[t]) for e, (body, own) in zip(experts, parts)]), 4)
                for s in splits}
            for t, task in zoo.tasks.items()}


def greedy_soup(zoo: Zoo, evaluator: Evaluator, experts: list[str] | None = None) -> tuple[Merged, list[dict]]:
    """Greedy soup (Wortsman et al. 2022): visit experts best-first by mean validation score, and keep each one
    whose addition to the running uniform average raises the soup's mean validation score. Dev data only.

    Returns the final soup and the trace ``[{"expert", "dev", "kept"}]``.
    """
    pool = [zoo.expert(n) for n in experts] if experts else list(zoo.experts)
    matrix = zoo.matrix(evaluator)
    order = sorted(pool, key=lambda e: -sum(s["validation"] for s in matrix[e.name].values()) / len(matrix[e.name]))
    heads = zoo.heads()

    def soup_of(members: list[Expert]) -> tuple[float, Merged]:
        if len(members) == 1:
            body, own = members[0].body_and_head()
            m = Merged("average", {}, body, {members[0].task: own}, shared_label_space(pool), members)
        else:
            m = merge_zoo("average", zoo, [e.name for e in members])
        if not m.heads_merged:
            m.heads = {**heads, **m.heads}  # tasks with no expert in the soup keep their own head
        return mean_score(score_merged(m, zoo, evaluator, splits=("validation",)), "validation"), m

    soup = [order[0]]
    best, merged = soup_of(soup)
    trace = [{"expert": order[0].name, "dev": best, "kept": True}]
    for e in order[1:]:
        score, candidate = soup_of(soup + [e])
        kept = score > best
        trace.append({"expert": e.name, "dev": score, "kept": kept})
        if kept:
            soup, best, merged = soup + [e], score, candidate
    merged.method, merged.options = "greedy_soup", {"soup": [e.name for e in soup]}
    return merged, trace


def merge_report(method: str, zoo: Zoo, experts: list[str] | None = None, evaluator: Evaluator | None = None,
                 **options) -> tuple[Merged, dict]:
    """Merge, then score the result next to each expert and the ensemble: what ``fusionkit merge`` prints.

    Returns the merged model and ``{"method", "options", "results", "ensemble", "experts", "notes", ...}``.
    """
    ev = evaluator or zoo.evaluator()
    trace = None
    if method == "greedy_soup":
        options.pop("seed", None)  # deterministic: nothing random to seed
        if options:
            raise MergeError(f"greedy_soup takes no options, got {sorted(options)}")
        merged, trace = greedy_soup(zoo, ev, experts)
    else:
        merged = merge_zoo(method, zoo, experts, **options)
    matrix = zoo.matrix(ev)
    report = {
        "method": method, "zoo": zoo.name, "profile": zoo.profile.name, "options": merged.options,
        "weights": merged.weights, "heads": "merged" if merged.heads_merged else "kept per task",
        "results": score_merged(merged, zoo, ev),
        "ensemble": ensemble_scores(zoo, ev, merged.experts),
        "experts": {e.name: matrix[e.name] for e in merged.experts},
        "chance": {t: round(task.chance("test"), 4) for t, task in zoo.tasks.items()},
        "notes": merged.notes, "merge_seconds": round(merged.seconds, 2),
    }
    if trace is not None:
        report["soup_trace"] = trace
    return merged, report


def sweep(zoo: Zoo, method: str, param: str, values, evaluator: Evaluator, split: str = "validation",
          experts: list[str] | None = None, **options) -> list[dict]:
    """Merge once per value of one option and score every task: ``[{param: v, "scores": {task: s}, "mean": m}]``."""
    rows = []
    for v in values:
        merged = merge_zoo(method, zoo, experts, **{**options, param: v})
        scores = {t: s[split] for t, s in score_merged(merged, zoo, evaluator, splits=(split,)).items()}
        rows.append({param: v, "scores": scores, "mean": round(sum(scores.values()) / len(scores), 4)})
    return rows


def compare(zoo: Zoo, specs: dict[str, tuple[str, dict]], evaluator: Evaluator, splits=SPLITS,
            experts: list[str] | None = None) -> dict[str, dict]:
    """Several merges side by side: ``specs[label] = (method, options)`` -> ``{label: {task: {split: s}}}``."""
    return {label: score_merged(merge_zoo(method, zoo, experts, **opts), zoo, evaluator, splits)
            for label, (method, opts) in specs.items()}


def mean_score(scores: dict, split: str = "test") -> float:
    """Mean over tasks of ``{task: {split: s}}``."""
    return round(sum(s[split] for s in scores.values()) / len(scores), 4)
