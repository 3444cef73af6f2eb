"""Writing a merged model: folders plain transformers loads, a recipe beside them, and a mergekit config.

* Shared heads: one ``save_pretrained`` folder. Different heads: one folder per task (``out/<task>/``), each
  the merged body with that task's head, so ``AutoModelForSequenceClassification.from_pretrained`` works as is.
* ``recipe.json``: method, resolved options, inputs (expert ids, tasks and sha256 of their weights), notes,
  package versions.
* ``mergekit.yml`` where mergekit has the same method, so a merge found on small models can be repeated on large
  ones (``mergekit-yaml mergekit.yml OUT``). Fisher, RegMean, MagMax, the SVD merges (TSV-M, ISO-C, ISO-CTS),
  consensus, EMR and TALL masks have no mergekit counterpart.
* Task-specific merges (EMR, TALL masks): one folder per task (each task's own model) and
  ``task_specific.safetensors``, the compact form - the shared vector once, each task's mask bit-packed and its
  scale (:class:`~fusionkit.merging.task_models.TaskModels`); ``recipe.json`` says what each costs in bytes.
* ``sentence-transformers/`` when asked (``--sentence-transformers``): the merged encoder as a folder
  ``SentenceTransformer(path)`` loads, the base's pooling kept (:mod:`fusionkit.merging.st_export`).
* ``.manifest.json`` (:mod:`fusionkit.core.manifest`), written last: loading the folder through the kit
  (``load_base``, ``fusionkit cache verify DIR``) says in one line if it was damaged since.

The folder is written under a temporary name, fsynced and only then renamed into place, so an interrupted or
killed save leaves the previous output as it was.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..core import manifest
from ..core.cache import atomic_dir, sha256_file, write_json
from ..core.errors import MergeError
from ..core.versioning import package_versions
from .st_export import ST_DIR, write_sentence_transformers
from .zoo_merge import Merged

# fusionkit method -> mergekit merge_method (DARE depends on what follows the drop).
MERGEKIT = {"average": "linear", "task_arithmetic": "task_arithmetic", "ties": "ties", "slerp": "slerp"}


def mergekit_config(merged: Merged, base_path: str | None = None) -> dict | None:
    """A mergekit config with the same semantics, or None where mergekit has no such method.

    Mapping: θ₀ + λΣwᵢτᵢ is mergekit's task_arithmetic with weight λwᵢ (normalize off); TIES with weight wᵢ,
    density and normalize on (the disjoint mean) and ``lambda``; DARE maps to dare_linear / dare_ties with
    density = 1 − p (mergekit's ``rescale: true``, its default, now scales the survivors to keep each task vector's
    L1 norm - earlier releases divided by density, the paper's rule; both keep the L1 norm in expectation - the
    kit's L1 variant is not exported). The data-free methods of :func:`_datafree_config` follow. Coefficients must
    be one list for all tensors to export.
    """
    method, o = merged.method, merged.options
    if method in DATAFREE:
        return _datafree_config(merged, base_path)
    if method == "dare":
        if o["rescale"] != "inverse":
            return None
        name = "dare_ties" if o["then"] == "ties" else "dare_linear"
    elif method in MERGEKIT:
        name = MERGEKIT[method]
    else:
        return None
    if isinstance(merged.weights, dict):
        return None  # per-tensor coefficients: mergekit takes them as tensor-name filters, not exported here
    weights = list(merged.weights) if merged.weights is not None else [1.0] * len(merged.experts)
    models = []
    for e, w in zip(merged.experts, weights):
        params = {}
        if name == "linear":
            params["weight"] = w
        elif name == "task_arithmetic":
            params["weight"] = o["lam"] * w
        elif name == "ties":
            params.update(weight=w, density=o["density"])
        elif name.startswith("dare"):
            params.update(weight=w, density=round(1 - o["p"], 6))
        models.append({"model": str(e.path), **({"parameters": params} if params else {})})
    config = {"merge_method": name, "models": models, "dtype": "float32"}
    if name == "slerp":
        config = {"merge_method": "slerp", "base_model": str(merged.experts[0].path),
                  "models": [{"model": str(e.path)} for e in merged.experts],
                  "parameters": {"t": o["t"]}, "dtype": "float32"}
    elif name != "linear":
        config["base_model"] = base_path
        config["parameters"] = {"normalize": name in ("ties", "dare_ties"),
                                **({"lambda": o["lam"]} if name != "task_arithmetic" else {})}
    else:
        config["parameters"] = {"normalize": bool(o.get("normalize", True))}
    return config


# fusionkit method -> mergekit merge_method, for the data-free methods beyond TIES (issue #16). MagMax, TSV-M,
# ISO-C and ISO-CTS have no mergekit counterpart.
DATAFREE = {"model_stock": "model_stock", "breadcrumbs": "breadcrumbs", "breadcrumbs_ties": "breadcrumbs_ties",
            "della": "della", "della_linear": "della_linear", "sce": "sce", "karcher": "karcher",
            "multislerp": "multislerp", "nearswap": "nearswap"}
UNWEIGHTED = ("model_stock", "sce", "karcher")  # mergekit ignores per-model weights there


def _datafree_config(merged: Merged, base_path: str | None) -> dict | None:
    """mergekit configs for Model Stock, Breadcrumbs (± TIES), DELLA (± linear), SCE, Karcher, Multi-SLERP and
    NearSwap, with mergekit's parameter names. Where the two differ (each method's docstring says how):

    * Breadcrumbs: weight wᵢ, density, gamma, ``lambda``; normalize off (a sum) or, for breadcrumbs_ties, on (the
      kit's disjoint mean). mergekit keeps nothing of a tensor with fewer than 1/gamma entries; the kit keeps its
      largest ⌊density·n⌋.
    * DELLA: weight, density, epsilon, ``lambda``; normalize on for della (disjoint mean), off for della_linear;
      ``rescale: true`` for the kit's 'l1' (the same rule) and 'inverse' (mergekit has no per-entry 1/q: its L1
      rescale is the nearest, equal in expectation of the L1 norm), false for 'none'.
    * Model Stock, SCE and Karcher take no per-model weights in mergekit: exported only with equal coefficients.
    * Multi-SLERP: mergekit's is the normalised weighted mean (NLERP) scaled to the mean norm; the kit's is the
      spherical average - the same for two models at equal weights, close otherwise.
    * NearSwap: the first expert is mergekit's base_model, the second its one model.
    """
    method, o, experts = merged.method, merged.options, merged.experts
    if isinstance(merged.weights, dict):
        return None
    weights = list(merged.weights) if merged.weights is not None else [1.0] * len(experts)
    if method in UNWEIGHTED and len(set(weights)) > 1:
        return None
    name = DATAFREE[method]
    config = {"merge_method": name}
    if method == "nearswap":
        config.update(base_model=str(experts[0].path), models=[{"model": str(experts[1].path)}],
                      parameters={"t": o["t"]})
        return {**config, "dtype": "float32"}
    per_model, params = [{} for _ in experts], {}
    if method.startswith("breadcrumbs"):
        per_model = [{"weight": w, "density": o["density"], "gamma": o["gamma"]} for w in weights]
        params = {"normalize": method == "breadcrumbs_ties", "lambda": o["lam"]}
    elif method.startswith("della"):
        per_model = [{"weight": w, "density": o["density"], "epsilon": o["epsilon"]} for w in weights]
        params = {"normalize": method == "della", "rescale": o["rescale"] != "none", "lambda": o["lam"]}
    elif method == "multislerp":
        per_model = [{"weight": w} for w in weights]
        params = {"normalize_weights": True}
    elif method == "model_stock":
        params = {"filter_wise": o["filter_wise"]}
    elif method == "sce":
        params = {"select_topk": o["select_topk"]}
    elif method == "karcher":
        params = {"max_iter": o["max_iter"], "tol": o["tol"]}
    uses_base = method != "karcher" and not (method == "multislerp" and not o["task_vectors"])
    if uses_base:
        config["base_model"] = base_path
    config["models"] = [{"model": str(e.path), **({"parameters": p} if p else {})} for e, p in zip(experts, per_model)]
    return {**config, "parameters": params, "dtype": "float32"}


def to_yaml(config: dict) -> str:
    """A mergekit config as YAML, keys in the order given (PyYAML's safe dumper)."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def save_merged(merged: Merged, out: str | Path, overwrite: bool = False, task_labels: dict | None = None,
                base_path: str | None = None, extra: dict | None = None,
                sentence_transformers: bool | str = False) -> Path:
    """Write the merged model(s), ``recipe.json`` and (where possible) ``mergekit.yml`` into ``out``.

    ``sentence_transformers``: also write the merged encoder as ``out/sentence-transformers/`` (one per task,
    ``out/sentence-transformers/<task>/``, for a task-specific merge), the folder ``SentenceTransformer`` loads, with
    the base's pooling (:mod:`fusionkit.merging.st_export`); True takes the base the experts were tuned from, a
    string names it (a bundled name or a sentence-transformers folder)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from ..models.lm_evaluator import tied_output_name

    out = Path(out)
    by_task = {}
    for e in merged.experts:
        by_task.setdefault(e.task, e)
    causal = getattr(merged.experts[0], "kind", "classifier") == "causal"
    one_model = merged.heads_merged and merged.bodies is None  # one model serves every task: written once
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if sentence_transformers:  # first: a base without a sentence-transformers configuration fails at once
            _save_sentence_transformers(merged, tmp, sentence_transformers)
        for task in list(merged.heads)[:1] if one_model else merged.heads:
            source = by_task[task]
            model = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_pretrained(source.path)
            missing = model.load_state_dict(merged.state_for(task), strict=False)
            tied = tied_output_name(model) if causal else None  # a tied LM head is the embedding table itself
            lacking = [k for k in missing.missing_keys if k != tied]
            if lacking:
                raise MergeError(f"merged state lacks {lacking[:3]}")
            folder = tmp if one_model else tmp / task
            model.save_pretrained(folder)
            AutoTokenizer.from_pretrained(source.path).save_pretrained(folder)
        recipe = {
            "method": merged.method, "options": merged.options, "weights": merged.weights,
            "heads": "merged" if merged.heads_merged else "kept per task (one folder per task)",
            **({"models": "one per task (one folder per task)"} if merged.bodies is not None else {}),
            "tasks": list(merged.heads),
            "inputs": [{"name": e.name, "id": e.id, "task": e.task, "path": str(e.path),
                        "sha256": sha256_file(e.path / "model.safetensors")} for e in merged.experts],
            "notes": merged.notes, "seconds": round(merged.seconds, 2), "versions": package_versions(), **(extra or {}),
        }
        if sentence_transformers:
            recipe["sentence_transformers"] = f"{ST_DIR}/ (SentenceTransformer(path) loads it)"
        if merged.task_models is not None:
            from .task_models import FILE

            merged.task_models.save(tmp / FILE)
            recipe["storage"] = merged.task_models.storage()
        write_json(tmp / "recipe.json", recipe)
        config = mergekit_config(merged, base_path)
        if config is not None:
            (tmp / "mergekit.yml").write_text(to_yaml(config))
        manifest.record(tmp, True, f"merged model: {merged.method} of {', '.join(e.name for e in merged.experts)}",
                        fix=f"the kit does not rebuild your outputs: merge again and save to {out} with overwrite=True "
                            "(--overwrite on the command line; recipe.json there says how it was made)")
    return out


def _save_sentence_transformers(merged: Merged, folder: Path, base: bool | str) -> None:
    if base is True:
        base = (getattr(merged.experts[0], "recipe", None) or {}).get("base") or "minilm"
    if merged.bodies is None:
        write_sentence_transformers(merged.body, folder / ST_DIR, base)
    else:
        for task in merged.heads:
            write_sentence_transformers(merged.body_for(task), folder / ST_DIR / task, base)
