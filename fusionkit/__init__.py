"""fusionkit: explore knowledge fusion of language models - merging in weight space and distillation.

``import fusionkit as fk`` is the public API the notebooks and the README rely on. Names load lazily (PEP 562):
``import fusionkit`` costs nothing, and ``fk.build_zoo`` imports the models layer only when first used.

The package's layers (imports only go downward; ``docs/architecture.md`` draws them)::

    cli, tour                      run the kit from a shell / execute the notebooks
    viz       plots, widgets       show     (beside it: reproduce, the papers' claims; teaching, checkers)
    search    dfwe, evolver        fuse by searching on dev data      distill   context distillation
    merging   registry, methods/, merge, statistics, zoo_merge, landscape, export      combine weights
    models    experts, training, zoo, heads, evaluator, scorer                          make and measure
    data      assets, tasks                                                             get
    core      cache, runtime, profiles, errors, lazy, versioning
"""
from __future__ import annotations

import importlib

from ._version import __version__

# public name -> "module" (the module itself) or "module:attribute"
_API = {
    # core
    "setup": "core.runtime:setup", "seed_everything": "core.runtime:seed_everything",
    "pick_device": "core.runtime:pick_device", "cache_dir": "core.cache:cache_dir",
    "PROFILES": "core.profiles:PROFILES", "Profile": "core.profiles:Profile", "get_profile": "core.profiles:get_profile",
    "FusionkitError": "core.errors:FusionkitError", "AssetError": "core.errors:AssetError",
    "TaskError": "core.errors:TaskError", "MergeError": "core.errors:MergeError",
    "SearchError": "core.errors:SearchError", "DistillError": "core.errors:DistillError",
    "CacheError": "core.errors:CacheError",
    "paired_bootstrap": "core.intervals:paired_bootstrap", "seed_interval": "core.intervals:seed_interval",
    "verdict": "core.intervals:verdict",
    # data
    "list_assets": "data.assets:list_assets", "load_base": "data.assets:load_base",
    "BUNDLED_TASKS": "data.tasks:BUNDLED", "Task": "data.tasks:Task", "load_task": "data.tasks:load_task",
    "task_from": "data.tasks:task_from",
    # models
    "Expert": "models.experts:Expert", "finetune": "models.training:finetune",
    "expert_from": "models.checkpoints:expert_from", "Checkpoint": "models.checkpoints:Checkpoint",
    "perplexity": "models.perplexity:perplexity",
    "load_domain": "data.domains:load_domain", "text_task_from": "data.domains:text_task_from",
    "TextTask": "data.domains:TextTask", "LMEvaluator": "models.lm_evaluator:LMEvaluator",
    "finetune_lm": "models.lm_training:finetune_lm", "gram_stats": "merging.statistics:gram_stats",
    "Evaluator": "models.evaluator:Evaluator", "evaluate": "models.evaluator:evaluate", "Scorer": "models.scorer:Scorer",
    "ZOOS": "models.zoo:ZOOS", "Zoo": "models.zoo:Zoo", "build_zoo": "models.zoo:build_zoo",
    "zoo_scorer": "models.zoo:zoo_scorer", "home_classes": "models.zoo:home_classes",
    "train_multitask": "models.multitask:train_multitask",
    "split_head": "models.heads:split_head", "base_state": "models.heads:base_state",
    "head_policy": "models.heads:head_policy", "task_heads": "models.heads:task_heads",
    # merging
    "merge": "merging.merge:merge", "merge_files": "merging.merge:merge_files",
    "METHODS": "merging.registry:METHODS", "describe_methods": "merging.registry:describe_methods",
    "Merged": "merging.zoo_merge:Merged", "merge_experts": "merging.zoo_merge:merge_experts",
    "merge_zoo": "merging.zoo_merge:merge_zoo", "merge_report": "merging.zoo_merge:merge_report",
    "score_merged": "merging.zoo_merge:score_merged", "ensemble_scores": "merging.zoo_merge:ensemble_scores",
    "compare": "merging.zoo_merge:compare", "sweep": "merging.zoo_merge:sweep",
    "mean_score": "merging.zoo_merge:mean_score", "choose_per_task": "merging.zoo_merge:choose_per_task",
    "merge_task_specific": "merging.task_models:merge_task_specific", "TaskModels": "merging.task_models:TaskModels",
    "load_task_models": "merging.task_models:load_task_models", "greedy_soup": "merging.methods.soups:greedy_soup",
    "adamerge": "merging.methods.adamerging:adamerge",
    "regression_loss": "merging.methods.regmean:regression_loss",
    "expert_stats": "merging.statistics:expert_stats", "ParamFilter": "merging.statedict:ParamFilter",
    "task_vector": "merging.statedict:task_vector", "cosine_matrix": "merging.analysis:cosine_matrix",
    "sign_conflicts": "merging.analysis:sign_conflicts", "layer_of": "merging.analysis:layer_of",
    "save_merged": "merging.export:save_merged",
    "save_sentence_transformers": "merging.st_export:save_sentence_transformers",
    # landscapes
    "path": "merging.landscape:path", "lerp": "merging.landscape:lerp", "barrier": "merging.landscape:barrier",
    "float_names": "merging.landscape:float_names", "tensor_angles": "merging.landscape:tensor_angles",
    "weight_matching": "merging.alignment:weight_matching",
    "activation_matching": "merging.alignment:activation_matching",
    "plane_through": "merging.landscape:plane_through", "random_plane": "merging.landscape:random_plane",
    "evaluate_grid": "merging.landscape:evaluate_grid", "grid_axes": "merging.landscape:grid_axes",
    "mix": "merging.landscape:mix", "simplex_grid": "merging.landscape:simplex_grid",
    "simplex_scores": "merging.landscape:simplex_scores",
    # search
    "dfwe": "search.dfwe:dfwe", "dfwe_baselines": "search.dfwe:dfwe_baselines", "dfwe_report": "search.dfwe:dfwe_report",
    "evolve": "search.evolver:evolve", "evolve_report": "search.evolver:evolve_report",
    "test_scores": "search.protocol:test_scores",
    # distillation (``fk.distill`` is the whole subpackage: fk.distill.run, fk.distill.settings, ...)
    "distill": "distill", "load_entities": "distill.entities:load_entities", "load_facts": "distill.entities:load_facts",
    # ensemble distillation: a zoo's experts into one student on unlabeled text
    "distill_zoo": "distill.ensemble:distill_zoo", "distill_report": "distill.ensemble:distill_report",
    # reproductions: a claim's row (A − B, paired interval, verdict) and the table
    "claim_row": "reproduce.table:compare", "reproduction_table": "reproduce.table:to_markdown",
    "merged_correct": "reproduce.merging:merged_correct", "per_example": "reproduce.merging:correct",
    # teaching: exercise checkers (fk.checkers.check_ties(fn), ...) and "what to notice" computed from a run
    "checkers": "teaching.checkers", "notice": "teaching.notice:ordering", "notice_claim": "teaching.notice:claim",
    # show and run
    "plots": "viz.plots", "widgets": "viz.widgets", "record": "tour:record",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'fusionkit' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(f"{__name__}.{module}")
    if attr:
        value = getattr(value, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
