"""Reading a mergekit config: the inverse of :func:`fusionkit.merging.export.mergekit_config`.

``fusionkit merge --config FILE.yml --out DIR`` runs a mergekit YAML with the kit, so a mergekit user can bring a
config into a notebook (``from_mergekit(path)`` gives the method, the model folders, the base and the kit's
options and per-model coefficients). What maps (mergekit name -> the kit's):

* ``linear`` -> average (``weight`` -> coefficients, ``normalize``); ``task_arithmetic`` -> task arithmetic with
  λ = 1 and the weights as coefficients (mergekit's weight is the kit's λ·wᵢ); ``slerp`` -> SLERP (``t``; the
  base model is the first end); ``nearswap`` -> NearSwap (base model first);
* ``ties`` / ``breadcrumbs_ties`` / ``della`` (sign election: ``normalize: true``, the kit's disjoint mean),
  ``breadcrumbs`` / ``della_linear`` (``normalize: false``), ``dare_ties`` / ``dare_linear`` (p = 1 − density,
  mergekit's ``rescale: true`` = the kit's L1 rescale), ``sce``, ``model_stock``, ``karcher``, ``multislerp``.

Not expressible, each named in one line with the fix: per-model densities that differ (the kit has one per
merge), gradient lists or tensor filters as parameter values (a value per layer), ``normalize: false`` for TIES
(a sum of the agreeing entries), and methods the kit does not have (``passthrough``, ``nuslerp``, ...).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..core.errors import MergeError

LINEAR_SIGNED = {"ties": "ties", "breadcrumbs_ties": "breadcrumbs_ties", "della": "della"}
LINEAR_PLAIN = {"breadcrumbs": "breadcrumbs", "della_linear": "della_linear"}


def from_mergekit(config) -> dict:
    """``{"method", "models": [folders], "base": folder or None, "options": {...}, "weights": [...] or None}``
    from a mergekit config (a dict, or a YAML file)."""
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise MergeError(f"{config}: no such mergekit config; fix: pass the YAML file mergekit-yaml reads")
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict):
            raise MergeError(f"{path} is not a mergekit config (a YAML mapping with merge_method and models)")
    name = config.get("merge_method")
    models = config.get("models") or []
    if not name or not models:
        raise MergeError("the config needs merge_method and models; fix: write it as mergekit-yaml expects "
                         "(merge_method: ties, base_model: ..., models: [{model: ..., parameters: {...}}])")
    paths = [m["model"] if isinstance(m, dict) else m for m in models]
    per = [(m.get("parameters") or {}) if isinstance(m, dict) else {} for m in models]
    top = config.get("parameters") or {}
    base = config.get("base_model")
    for where, params in [("parameters", top)] + [(f"models[{i}].parameters", p) for i, p in enumerate(per)]:
        for k, v in params.items():
            if isinstance(v, (list, dict)):
                raise MergeError(f"{where}.{k} is {type(v).__name__} (a value per layer or a tensor filter), which "
                                 "this import does not express; fix: use one number (or merge per-layer weights "
                                 "in Python: merge(..., weights={glob: [...]}))")

    def one(key, default=None):
        values = {p.get(key, default) for p in per}
        if len(values) > 1:
            raise MergeError(f"the models' {key} differ ({sorted(values, key=str)}); the kit uses one {key} per merge; "
                             "fix: give every model the same value")
        return values.pop()

    weights = [float(p.get("weight", 1.0)) for p in per]
    method, options = _method(name, top, one, base)
    if method in ("slerp", "nearswap"):
        # mergekit: t = 0 is base_model; slerp lists both ends under models, nearswap only the other one
        others = [p for p in paths if str(p) != str(base)]
        if base is None or len(others) != 1:
            raise MergeError(f"{name}: mergekit moves base_model towards one other model; fix: give base_model and "
                             "one other model")
        paths, base, weights = [base, *others], None, None
    elif method in ("average", "karcher", "multislerp") and not (method == "multislerp" and base):
        base = None
    if weights is not None and all(w == 1.0 for w in weights):
        weights = None
    return {"method": method, "models": [str(p) for p in paths], "base": None if base is None else str(base),
            "options": options, "weights": weights}


def _method(name: str, top: dict, one, base) -> tuple[str, dict]:
    if name == "linear":
        return "average", {"normalize": bool(top.get("normalize", True))}
    if name == "task_arithmetic":
        return "task_arithmetic", {"lam": float(top.get("lambda", 1.0))}
    if name == "slerp":
        return "slerp", {"t": float(top.get("t", 0.5))}
    if name == "nearswap":
        return "nearswap", {"t": float(top["t"])}
    lam = float(top.get("lambda", 1.0))
    if name in LINEAR_SIGNED or name in LINEAR_PLAIN:
        if name in LINEAR_SIGNED and not top.get("normalize", True):
            raise MergeError(f"{name} with normalize: false sums the agreeing entries; the kit averages them "
                             "(the papers' disjoint mean); fix: set normalize: true")
        opts = {"density": float(one("density", 1.0)), "lam": lam}
        if name.startswith("breadcrumbs"):
            opts["gamma"] = float(one("gamma", 0.01))
        if name.startswith("della"):
            opts.update(epsilon=float(one("epsilon", 0.15)),
                        rescale="l1" if top.get("rescale", True) else "none")
        return (LINEAR_SIGNED | LINEAR_PLAIN)[name], opts
    if name in ("dare_ties", "dare_linear"):
        if not top.get("rescale", True):
            raise MergeError(f"{name} with rescale: false keeps the survivors unscaled, which the kit's DARE does "
                             "not offer; fix: set rescale: true (the survivors keep each task vector's L1 norm)")
        return "dare", {"p": round(1.0 - float(one("density", 1.0)), 6), "lam": lam, "rescale": "l1",
                        "then": "ties" if name == "dare_ties" else "task_arithmetic"}
    if name == "sce":
        return "sce", {"select_topk": float(top.get("select_topk", 1.0))}
    if name == "model_stock":
        return "model_stock", {"filter_wise": bool(top.get("filter_wise", False))}
    if name == "karcher":
        return "karcher", {k: top[k] for k in ("max_iter", "tol") if k in top}
    if name == "multislerp":
        return "multislerp", {"task_vectors": base is not None}
    raise MergeError(f"mergekit's {name!r} has no counterpart in the kit; fix: use one of linear, task_arithmetic, "
                     "ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear, sce, "
                     "model_stock, karcher, multislerp, slerp, nearswap (fusionkit merge --list)")
