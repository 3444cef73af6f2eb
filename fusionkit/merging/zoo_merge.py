"""Merging a zoo's experts into one model: what is merged, which statistics, and how the result scores.

What is merged follows the head policy (:mod:`fusionkit.models.heads`): experts of different tasks merge their
bodies and each task keeps its own head on the merged body; experts that share one label space merge their heads
too, with the same method. Methods that need θ₀ get the base model as the experts saw it
(:func:`~fusionkit.models.heads.base_state`). Zoo-level methods (greedy soup) are dispatched here too, through
the same registry.

Reference points that are not merges sit beside every merge (RegMean's, Jin et al. 2023 §4): each expert alone;
where the experts share one label space, the logit ensemble (the mean of the experts' logits: N forward passes,
the accuracy a merge tries to reach in one); where they do not, the multi-task model (one body trained on every
task's data, :mod:`fusionkit.models.multitask`) - averaging task t's head over bodies that never trained with it
is not an ensemble of anything.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..core.errors import MergeError
from ..core.lazy import lazy_import
from ..models.evaluator import Evaluator
from ..models.experts import Expert, check_experts
from ..models.heads import base_state, fused_heads, head_for, head_policy, shared_label_space, split_head
from ..models.zoo import Zoo
from .merge import merge
from .registry import get_method
from .statedict import ParamFilter, StateDict
from .statistics import expert_stats

torch = lazy_import("torch")

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
    trace: list | None = None  # what a zoo-level method tried on dev data (greedy soup: each expert kept or not)
    # Task-specific merges (EMR, TALL): each task's own body, and the compact form (shared vector + masks).
    # ``body`` is then θ₀ + the shared vector, which no task runs.
    bodies: dict[str, StateDict] | None = None
    task_models: object = None  # fusionkit.merging.task_models.TaskModels

    def body_for(self, task: str) -> StateDict:
        """The body task ``task`` runs: the one merged body, or its own for a task-specific merge."""
        return self.bodies[task] if self.bodies is not None else self.body

    def state_for(self, task: str) -> StateDict:
        return {**self.body_for(task), **self.heads[task]}


def merge_experts(method: str, experts: list[Expert], train_tasks: dict | None = None, base: str = "minilm",
                  seed: int = 0, weights=None, filter: ParamFilter | None = None, stats_examples: int = 128,
                  max_length: int = 128, fisher_variant: str = "sample", **options) -> Merged:
    """Merge experts' weights with a registered per-tensor method, following the head policy.

    ``train_tasks`` maps expert name -> the data it was tuned on (for Gram / Fisher statistics).
    """
    check_experts(experts)
    m = get_method(method)
    if m.level == "task":
        return _merge_per_task(m, experts, base, seed, weights, filter, **options)
    if m.level != "tensor":
        raise MergeError(f"{method} merges a zoo; fix: use merge_zoo({method!r}, zoo)")
    if "seed" in m.options:
        options.setdefault("seed", seed)
    t0 = time.perf_counter()
    states = [e.state_dict() for e in experts]
    policy = head_policy(experts, states=states)
    names = list(policy.fused_part(states[0]))
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
    body, merged_head = split_head(res.state, policy.prefixes)
    heads = fused_heads(experts, merged_head) if policy.fused_heads else policy.heads
    return Merged(method, res.options, body, heads, policy.fused_heads, experts, res.notes,
                  time.perf_counter() - t0, weights)


def _merge_per_task(m, experts: list[Expert], base: str, seed: int, weights, filter, **options) -> Merged:
    """A task-level method (EMR, TALL): one body per task from the shared vector and that task's mask; each
    expert is its task's model, so the experts' tasks must differ."""
    from .task_models import merge_task_specific

    tasks = [e.task for e in experts]
    if len(set(tasks)) < len(tasks):
        twice = sorted({t for t in tasks if tasks.count(t) > 1})
        raise MergeError(f"{m.name} keeps one model per task, but task(s) {twice} have several experts; fix: pick "
                         "one expert per task (experts=[...])")
    t0 = time.perf_counter()
    states = [e.state_dict() for e in experts]
    policy = head_policy(experts, states=states)
    names = list(policy.fused_part(states[0]))
    base_sd = base_state(base, experts[0].recipe["labels"], seed)
    parts = merge_task_specific(m.name, states, base_sd, weights=weights, filter=filter, names=names,
                                labels=tasks, **options)
    bodies, heads = {}, {}
    for t in tasks:
        body, own_head = split_head(parts.state(t, base_sd), policy.prefixes)
        bodies[t] = body
        heads[t] = own_head if policy.fused_heads else policy.heads[t]
    shared_body = split_head({n: (base_sd[n] + parts.shared[n].to(base_sd[n].dtype))
                              if n in parts.shared else parts.copied.get(n, base_sd[n]) for n in names},
                             policy.prefixes)[0]
    return Merged(m.name, parts.options, shared_body, heads, policy.fused_heads, experts, parts.notes,
                  time.perf_counter() - t0, weights, bodies=bodies, task_models=parts)


def merge_zoo(method: str, zoo: Zoo, experts: list[str] | None = None, evaluator: Evaluator | None = None,
              **options) -> Merged:
    """Merge a zoo (all its experts, or those named) with any registered method: per-tensor methods through
    :func:`merge_experts` with the zoo's profile settings, zoo-level ones (greedy soup) on ``evaluator``'s dev data."""
    m = get_method(method)
    if m.level == "zoo":
        if "seed" not in m.options:
            options.pop("seed", None)  # greedy soup chooses on dev data: nothing random to seed
        t0 = time.perf_counter()
        merged, trace = m.fn(zoo, evaluator or zoo.evaluator(), experts, **m.resolve(options))
        merged.trace, merged.seconds = trace, time.perf_counter() - t0
        return merged
    chosen = [zoo.expert(n) for n in experts] if experts else zoo.experts
    options.setdefault("stats_examples", zoo.profile.stats_examples)
    return merge_experts(method, chosen, zoo.train_tasks, base=zoo.base, max_length=zoo.profile.max_length,
                         **options)


# ------------------------------------------------------------------------------------------------ scores
def score_merged(merged: Merged, zoo: Zoo, evaluator: Evaluator, splits=SPLITS) -> dict:
    """``{task: {split: score}}`` of the merged body with each task's head, on every task it has a head for."""
    return {t: {s: round(evaluator.score(task, s, params=merged.body_for(t), head=merged.heads[t]), 4) for s in splits}
            for t, task in zoo.tasks.items() if t in merged.heads}


def ensemble_members(zoo: Zoo, experts: list[Expert] | None = None) -> dict[str, list[tuple[dict, dict]]]:
    """Per task, the logit ensemble's members: each expert's body with that task's head (experts that share one
    label space only)."""
    experts = experts or zoo.experts
    if not shared_label_space(experts):
        raise MergeError(f"the logit ensemble needs experts that share one label space; zoo {zoo.name!r} mixes "
                         f"{len({tuple(e.recipe['labels']) for e in experts})}; fix: compare with the multi-task "
                         "model (zoo.multitask_model(), score_merged) instead")
    parts = [e.body_and_head() for e in experts]
    heads = zoo.heads()
    return {t: [(body, head_for(t, e.task, own, heads)) for e, (body, own) in zip(experts, parts)] for t in zoo.tasks}


def ensemble_scores(zoo: Zoo, evaluator: Evaluator, experts: list[Expert] | None = None, splits=SPLITS) -> dict:
    """The output ensemble: per task, the mean of every expert's logits (experts that share one label space), or
    for language models the mixture of their next-token distributions."""
    members = ensemble_members(zoo, experts)
    return {t: {s: round(evaluator.ensemble_score(task, s, members[t]), 4) for s in splits}
            for t, task in zoo.tasks.items()}


def merge_report(method: str, zoo: Zoo, experts: list[str] | None = None, evaluator: Evaluator | None = None,
                 per_task: tuple[str, list] | None = None, **options) -> tuple[Merged, dict]:
    """Merge, then score the result next to each expert and its reference: what ``fusionkit merge`` prints.

    Returns the merged model and ``{"method", "options", "results", "ensemble", "multitask", "experts", "notes",
    ...}``: ``ensemble`` where the experts share one label space, ``multitask`` (the zoo's multi-task model, trained
    once and cached) where they do not and the whole zoo is merged; each is None otherwise. ``per_task = (param,
    values)`` chooses that option per task on validation (:func:`choose_per_task`, task-specific methods only);
    the report's ``trace`` then holds every value's validation scores.
    """
    ev = evaluator or zoo.evaluator()
    if per_task is not None:
        merged = choose_per_task(zoo, method, per_task[0], per_task[1], ev, experts, **options)
    else:
        merged = merge_zoo(method, zoo, experts, evaluator=ev, **options)
    matrix = zoo.matrix(ev)
    report = {
        "method": method, "zoo": zoo.name, "profile": zoo.profile.name, "options": merged.options,
        "weights": merged.weights, "heads": "merged" if merged.heads_merged else "kept per task",
        "results": score_merged(merged, zoo, ev),
        "ensemble": ensemble_scores(zoo, ev, merged.experts) if shared_label_space(merged.experts) else None,
        "multitask": score_merged(zoo.multitask_model(quiet=True), zoo, ev)
        if not shared_label_space(merged.experts) and len(merged.experts) == len(zoo.experts) and zoo.train_tasks
        else None,
        "experts": {e.name: matrix[e.name] for e in merged.experts},
        "metric": next(iter(zoo.tasks.values())).metric,
        "chance": {t: None if task.chance("test") is None else round(task.chance("test"), 4)
                   for t, task in zoo.tasks.items()},
        "notes": merged.notes, "merge_seconds": round(merged.seconds, 2),
    }
    if merged.trace is not None:  # what a dev-data method tried: the soup's steps, AdaMerging's entropy per step
        report["trace"] = merged.trace
    if merged.task_models is not None:
        report["storage"] = merged.task_models.storage()
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


def choose_per_task(zoo: Zoo, method: str, param: str, values, evaluator: Evaluator,
                    experts: list[str] | None = None, **options) -> Merged:
    """A task-specific merge whose option ``param`` is chosen for each task on its validation split (TALL masks'
    λₜ from 0.2-0.6, Wang et al. 2024 §4): merge once per value, keep for task t the body that scored best on
    t's validation split. Test data is not looked at. ``merged.trace`` has every value's validation scores and
    ``merged.options[param]`` the value chosen per task."""
    if get_method(method).level != "task":
        raise MergeError(f"{method} makes one model for every task, so there is nothing to choose per task; fix: "
                         "use sweep() and pick one value on the mean validation score")
    values = list(values)
    if not values:
        raise MergeError(f"choose_per_task: no values of {param!r} to choose from; fix: pass e.g. [0.2, 0.4, 0.6]")
    runs, trace = [], []
    for v in values:
        merged = merge_zoo(method, zoo, experts, **{**options, param: v})
        scores = {t: s["validation"] for t, s in score_merged(merged, zoo, evaluator, splits=("validation",)).items()}
        runs.append(merged)
        trace.append({param: v, "scores": scores})
    best = {t: max(range(len(values)), key=lambda i: trace[i]["scores"][t]) for t in runs[0].bodies}
    first = runs[0]
    parts = first.task_models
    if parts is not None and all(all(torch.equal(r.task_models.shared[n], parts.shared[n]) for n in parts.shared)
                                 for r in runs[1:]):
        # one shared vector whatever the value (TALL: λ moves only the masks): keep the compact form, chosen masks
        from .task_models import TaskModels

        chosen = [runs[best[t]].task_models for t in parts.labels]
        parts = TaskModels(method, {**parts.options, param: {t: values[best[t]] for t in parts.labels}}, parts.labels,
                           parts.shared, [c.masks[i] for i, c in enumerate(chosen)],
                           [c.scales[i] for i, c in enumerate(chosen)], parts.copied, parts.notes)
    else:
        parts = None
    return Merged(method, {**first.options, param: {t: values[i] for t, i in best.items()}}, first.body,
                  {t: runs[i].heads[t] for t, i in best.items()}, first.heads_merged, first.experts, first.notes,
                  sum(r.seconds for r in runs), first.weights, trace=trace,
                  bodies={t: runs[i].bodies[t] for t, i in best.items()}, task_models=parts)


def compare(zoo: Zoo, specs: dict[str, tuple[str, dict]], evaluator: Evaluator, splits=SPLITS,
            experts: list[str] | None = None) -> dict[str, dict]:
    """Several merges side by side: ``specs[label] = (method, options)`` -> ``{label: {task: {split: s}}}``."""
    return {label: score_merged(merge_zoo(method, zoo, experts, **opts), zoo, evaluator, splits)
            for label, (method, opts) in specs.items()}


def mean_score(scores: dict, split: str = "test") -> float:
    """Mean over tasks of ``{task: {split: s}}``."""
    return round(sum(s[split] for s in scores.values()) / len(scores), 4)
