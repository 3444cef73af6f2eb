"""The multi-task model: one body and a head per task, trained on the union of the tasks' training data with the
experts' recipe and budget - the reference a merge of experts is measured against.

RegMean (Jin et al. 2023, §4) compares merges with each model alone, simple and Fisher averaging, the ensemble
(where the label space is shared) and multi-task learning: a model trained on all the data at once, the upper
bound a data-free merge tries to approach. Same recipe as an expert (:func:`~fusionkit.models.fitting.fit`: the
same epochs over the same examples, so as many steps as the experts together), cached by a hash of the bases,
tasks, hyperparameters, seed and the training code.

It quacks like a merge: ``.body``, ``.body_for(task)`` and ``.heads[task]``, so ``score_merged(multitask, zoo, evaluator)`` scores it
beside every merge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, read_json, stable_hash, write_json
from ..core.errors import FusionkitError
from ..core.profiles import Profile, get_profile
from ..core.runtime import pick_device, quiet_transformers, seed_everything
from ..core.versioning import code_version, package_versions
from ..data.assets import load_base
from ..data.tasks import Task
from .fitting import fit
from .heads import head_prefixes, split_head

HEAD_SEP = "::"  # heads.safetensors keys are "<task>::<parameter>"


@dataclass
class MultiTask:
    """A trained multi-task model on disk: ``body`` (the shared tensors) and ``heads[task]``."""

    path: Path
    recipe: dict
    _loaded: dict = field(default_factory=dict, repr=False)

    def _load(self) -> dict:
        if not self._loaded:
            from safetensors.torch import load_file

            heads: dict = {}
            for key, t in load_file(self.path / "heads.safetensors").items():
                task, name = key.split(HEAD_SEP, 1)
                heads.setdefault(task, {})[name] = t
            self._loaded.update(body=load_file(self.path / "body.safetensors"), heads=heads)
        return self._loaded

    @property
    def body(self) -> dict:
        return self._load()["body"]

    @property
    def heads(self) -> dict[str, dict]:
        return self._load()["heads"]

    @property
    def method(self) -> str:
        return "multi-task model"

    def body_for(self, task: str) -> dict:
        """The body every task runs (one shared body), as for a merge."""
        return self.body

    def state_for(self, task: str) -> dict:
        return {**self.body, **self.heads[task]}


def save_parts(folder: Path, body: dict, heads: dict[str, dict], meta: dict) -> None:
    """Write one body, a head per task and the recipe into ``folder`` - the layout :class:`MultiTask` reads."""
    from safetensors.torch import save_file

    flat = {f"{t}{HEAD_SEP}{k}": v for t, head in heads.items() for k, v in head.items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in body.items()}, str(folder / "body.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in flat.items()}, str(folder / "heads.safetensors"))
    write_json(folder / "recipe.json", meta)


def union_by_task(train_tasks: dict[str, Task]) -> dict[str, Task]:
    """Per task name, the union of the training data of every expert trained on it (a zoo's partitions of one
    task become that task's whole training set)."""
    import datasets

    grouped: dict[str, list[Task]] = {}
    for task in train_tasks.values():
        grouped.setdefault(task.name, []).append(task)
    out = {}
    for name, parts in grouped.items():
        first = parts[0]
        if len(parts) == 1:
            out[name] = first
            continue
        train = datasets.concatenate_datasets([p.data["train"] for p in parts])
        out[name] = Task(name, datasets.DatasetDict({**first.data, "train": train}), first.metric, first.description)
    return out


def train_multitask(base: str, tasks: dict[str, Task], profile: str | Profile = "smoke", seed: int = 0,
                    device="auto", quiet: bool = False, **overrides) -> MultiTask:
    """Train (or reuse from the cache) one body with a head per task on the union of ``tasks``' training data."""
    if not tasks:
        raise FusionkitError("a multi-task model needs at least one task; fix: pass {task name: Task}")
    profile = get_profile(profile).with_(**overrides)
    train = {k: getattr(profile, k) for k in ("max_length", "epochs", "batch_size", "lr")}
    recipe = {"code": code_version(f"{__name__}:_train", "fusionkit.models.fitting", "fusionkit.models.optimiser"),
              "base": base, "seed": seed,
              "train": train,
              "tasks": {t: {"fingerprint": task.fingerprint(), "labels": task.label_names} for t, task in tasks.items()}}
    art = Artefact(cache_dir("multitask") / stable_hash(recipe), True, "multi-task model",
                   f"multi-task model: {', '.join(tasks)} on {base}, seed {seed}, {train['epochs']} epochs")
    return obtain(art, lambda path: MultiTask(path, read_json(path / "recipe.json")),
                  lambda tmp: _train(tmp, art, recipe, base, tasks, train, seed, device, quiet))


def _train(tmp, art, recipe, base, tasks, train, seed, device, quiet) -> MultiTask:
    """Train the multi-task model and write it into the folder ``tmp`` (moved to ``art.path`` after)."""
    quiet_transformers()
    seed_everything(seed)
    models, tokenizer = {}, None
    for t, task in tasks.items():  # heads are initialised in task order from the seeded RNG
        model, tok = load_base(base, labels=task.label_names)
        if models:  # every task's classifier sits on the first model's body
            first = next(iter(models.values()))
            setattr(model, model.base_model_prefix, first.base_model)
        models[t], tokenizer = model, tokenizer or tok
    run = fit(models, tokenizer, tasks, seed=seed, device=pick_device(device), desc="multi-task model", quiet=quiet,
              **train)
    first = next(iter(models.values()))
    prefixes = head_prefixes(first)
    body = split_head(first.state_dict(), prefixes)[0]
    heads = {t: split_head(m.state_dict(), prefixes)[1] for t, m in models.items()}
    meta = {**recipe, "head_prefixes": list(prefixes), "train_examples": run.examples, "steps": run.steps,
            "train_seconds": round(run.seconds, 1), "final_loss": run.final_loss, "versions": package_versions()}
    save_parts(tmp, body, heads, meta)
    return MultiTask(art.path, meta)
