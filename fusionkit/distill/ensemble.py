"""Ensemble distillation of a zoo: one student - one body, a head per task - trained to match the experts' output
distributions on unlabeled text. The data-hungry alternative to a merge: it needs text and training, a merge
needs neither (knowledge distillation, Hinton et al. 2015; distilling an ensemble into one model to fuse models,
Lin et al., NeurIPS 2020, "Ensemble Distillation for Robust Model Fusion in Federated Learning").

* **Teacher** for task t: the logit ensemble of the zoo's experts trained on t, p_t(x) = softmax(z̄_t(x)/τ) with
  z̄_t the mean of their logits - the one expert where each task has one (the multitask zoo), the mean over the
  partitions where the experts share a label space (Lin et al.'s average of the clients' logits).
* **Loss** on a batch B of texts: L = (1/|T|) Σ_t τ²/|B| Σ_{x∈B} KL(p_t(x) ‖ q_t(x)), q_t = softmax(s_t(x)/τ) with
  s_t = h_t(f_θ(x)) the student's head t on its body. Every text goes through every head, so a text needs no label
  and no task: the zoo's training texts without their labels, or any text the user brings.
* **Student** starts from the base body θ₀ with each task's head from the zoo, or from a merge ("merge, then
  distil": the merge's body and heads). It trains with the kit's fine-tuning recipe (AdamW, weight decay 0.01,
  linear warm-up over 10% of the steps then decay, gradients clipped to norm 1; :mod:`fusionkit.models.optimiser`).

The teacher's logits are computed once (one forward per expert per text); the student's body runs once per batch
and each head reads the same features. The result is cached like the multi-task model and quacks like a merge
(``.body``, ``.heads[task]``), so ``score_merged`` puts it in the same table, with its cost beside it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.artefacts import Artefact, obtain
from ..core.cache import cache_dir, read_json, stable_hash
from ..core.errors import FusionkitError
from ..core.runtime import pick_device, quiet_transformers, seed_everything
from ..core.versioning import code_version, package_versions
from ..data.tasks import Task
from ..models.evaluator import Evaluator
from ..models.heads import base_state, split_head
from ..models.multitask import MultiTask, save_parts
from ..models.optimiser import Optimiser
from ..models.zoo import Zoo
from .training import kl_loss


@dataclass
class Distilled(MultiTask):
    """A distilled student on disk: ``body``, ``heads[task]``, and in ``recipe`` its KL curve and costs."""

    experts: list = field(default_factory=list, repr=False)

    @property
    def method(self) -> str:
        return "ensemble distillation"

    @property
    def options(self) -> dict:
        return self.recipe["options"]

    @property
    def trace(self) -> list[dict]:
        return self.recipe["trace"]

    @property
    def cost(self) -> dict:
        """What the student cost: steps, texts seen, teacher forwards, training seconds."""
        return self.recipe["cost"]


def unlabeled(texts: list[str], name: str = "unlabeled") -> Task:
    """Texts as a one-split task (labels all 0, never read) so an :class:`Evaluator` can run them."""
    import datasets

    if not texts:
        raise FusionkitError("no texts to distil on; fix: pass a non-empty list of strings")
    ds = datasets.Dataset.from_dict({"text": list(texts), "label": [0] * len(texts)})
    return Task(name, datasets.DatasetDict(train=ds))


def zoo_texts(zoo: Zoo) -> list[str]:
    """The training texts of every expert of the zoo, without labels, each once, in a fixed order."""
    return list(dict.fromkeys(t for task in zoo.train_tasks.values() for t in task.data["train"]["text"]))


def teacher_members(zoo: Zoo) -> dict[str, list]:
    """Per task, the experts whose mean logits teach it: every expert of the zoo trained on that task."""
    members = {t: [e for e in zoo.experts if e.task == t] for t in zoo.tasks}
    missing = [t for t, m in members.items() if not m]
    if missing:
        raise FusionkitError(f"no expert of zoo {zoo.name!r} was trained on {missing}; fix: distil a zoo whose every "
                             "task has an expert (or take zoo.subset of the experts you have)")
    return members


@torch.no_grad()
def teacher_logits(zoo: Zoo, texts: list[str], evaluator: Evaluator) -> dict[str, torch.Tensor]:
    """``{task: [N, C] mean logits of its teachers}`` on ``texts`` (float32, one forward per teacher)."""
    data = unlabeled(texts)
    out = {}
    for t, experts in teacher_members(zoo).items():
        parts = [e.body_and_head() for e in experts]
        out[t] = torch.stack([evaluator.logits(data, "train", params=b, head=h, precision="float32")
                              for b, h in parts]).mean(0)
    return out


def ensemble_kl(student: dict[str, torch.Tensor], teacher_logp: dict[str, torch.Tensor], tau: float) -> torch.Tensor:
    """(1/|T|) Σ_t τ²/|B| Σ_x KL(p_t(x) ‖ q_t(x)): the mean over tasks of :func:`~fusionkit.distill.training.kl_loss`."""
    return torch.stack([kl_loss(student[t], teacher_logp[t], tau) for t in teacher_logp]).mean()


def _init_recipe(init) -> dict | str:
    if init is None:
        return "base"
    return {"method": init.method, "options": init.options, "experts": [e.id for e in init.experts]}


def refuse_lm_zoo(name: str) -> None:
    """The one-line refusal for a zoo of language models (the command line says it before building the zoo)."""
    raise FusionkitError(f"zoo {name!r} holds language models and distill_zoo trains a classifier student on the "
                         "experts' mean logits; fix: fuse LMs by merging (merge_zoo, fusionkit merge METHOD --zoo "
                         "causal) or with fusionkit.distill.fusellm")


def distill_zoo(zoo: Zoo, texts: list[str] | None = None, steps: int | None = None, tau: float = 2.0,
                lr: float | None = None, batch_size: int | None = None, init=None, seed: int = 0, device="auto",
                callback: Callable[[dict], None] | None = None, quiet: bool = False) -> Distilled:
    """Distil the zoo's experts into one student (cached): see the module docstring for the teacher and the loss.

    ``texts``: unlabeled text (default: :func:`zoo_texts`). ``steps``: student updates (default: one pass over the
    texts). ``lr``/``batch_size``: default the zoo's profile. ``init``: a :class:`~fusionkit.merging.zoo_merge.Merged`
    of this zoo to start from (default: the base body and the zoo's heads). ``callback(entry)`` sees every step's
    ``{"step", "kl", "seconds"}`` - the live curve: ``callback=fk.widgets.KLDashboard("ensemble distillation").update``.
    """
    if zoo.experts[0].kind == "causal":
        refuse_lm_zoo(zoo.name)
    texts = list(texts) if texts is not None else zoo_texts(zoo)
    if not texts:
        raise FusionkitError("no texts to distil on; fix: pass a non-empty list of strings (or texts=None for the "
                             "zoo's own training texts)")
    profile = zoo.profile
    batch_size = batch_size or profile.batch_size
    steps = steps if steps is not None else math.ceil(len(texts) / batch_size)
    lr = lr if lr is not None else profile.lr
    if steps < 1 or tau <= 0 or lr <= 0 or batch_size < 1:
        raise FusionkitError(f"steps={steps}, tau={tau}, lr={lr}, batch_size={batch_size}; fix: steps >= 1, "
                             "tau > 0, lr > 0, batch_size >= 1")
    prefixes = tuple(zoo.experts[0].recipe["head_prefixes"])
    if len(prefixes) != 1:
        raise FusionkitError(f"ensemble distillation reads each head's input from one head module; these experts' "
                             f"head is {list(prefixes)}; fix: use experts whose classifier is one module (BERT, RoBERTa)")
    if init is not None and set(init.heads) != set(zoo.tasks):
        raise FusionkitError(f"init has heads for {sorted(init.heads)}, the zoo's tasks are {sorted(zoo.tasks)}; fix: "
                             "start from a merge of this zoo (merge_zoo(method, zoo))")
    options = {"steps": steps, "tau": tau, "lr": lr, "batch_size": batch_size, "max_length": profile.max_length,
               "seed": seed, "init": _init_recipe(init)}
    recipe = {"code": code_version(__name__, "fusionkit.models.optimiser"), "experts": [e.id for e in zoo.experts], "tasks": list(zoo.tasks),
              "texts": stable_hash(texts), "options": options}
    start = "base" if init is None else f"a {init.method} merge"
    art = Artefact(cache_dir("distilled") / stable_hash(recipe), True, "distilled student",
                   f"ensemble distillation of zoo {zoo.name} ({len(zoo.experts)} experts) from {start}: "
                   f"{steps} steps on {len(texts)} texts, tau {tau}")
    return obtain(art, lambda path: Distilled(path, read_json(path / "recipe.json"), experts=zoo.experts),
                  lambda tmp: _distil(tmp, art, recipe, zoo, texts, init, device, callback, quiet))


def _distil(tmp, art, recipe, zoo, texts, init, device, callback, quiet) -> Distilled:
    quiet_transformers()
    o = recipe["options"]
    seed_everything(o["seed"])
    device = pick_device(device)
    t0 = time.perf_counter()
    model, tokenizer = zoo.experts[0].load()
    evaluator = Evaluator(model, tokenizer, max_length=o["max_length"], batch_size=zoo.profile.eval_batch_size)
    teacher_logp = {t: torch.log_softmax(z / o["tau"], -1) for t, z in teacher_logits(zoo, texts, evaluator).items()}
    teacher_seconds = time.perf_counter() - t0

    (prefix,) = zoo.experts[0].recipe["head_prefixes"]
    start = start_of(zoo, init, o["seed"])
    body, heads0 = start.body, start.heads
    model.load_state_dict({**model.state_dict(), **body})
    model.to(device).train()
    head_module = model.get_submodule(prefix)
    heads = {t: {k[len(prefix) + 1:]: torch.nn.Parameter(v.detach().clone().float().to(device))
                 for k, v in heads0[t].items()} for t in zoo.tasks}
    body_params = [p for n, p in model.named_parameters() if not n.startswith(prefix + ".")]
    opt = Optimiser(body_params + [p for h in heads.values() for p in h.values()], o["lr"], o["steps"])

    features = {}
    hook = head_module.register_forward_pre_hook(lambda module, args: features.__setitem__("x", args[0]))
    enc = tokenizer(texts, truncation=True, max_length=o["max_length"])
    gen = torch.Generator().manual_seed(o["seed"])
    order: list[int] = []
    trace, t1 = [], time.perf_counter()
    try:
        for step in tqdm(range(1, o["steps"] + 1), desc="ensemble distillation", disable=quiet, leave=False):
            if len(order) < o["batch_size"]:  # seeded passes over the texts, one after another
                order += torch.randperm(len(texts), generator=gen).tolist()
            idx, order = order[:o["batch_size"]], order[o["batch_size"]:]
            batch = tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in idx], return_tensors="pt")
            model(**{k: v.to(device) for k, v in batch.items()})  # the body once; each head reads its features
            student = {t: torch.func.functional_call(head_module, h, (features["x"],)) for t, h in heads.items()}
            kl = opt.step(ensemble_kl(student, {t: lp[idx].to(device) for t, lp in teacher_logp.items()}, o["tau"]))
            trace.append({"step": step, "kl": round(kl, 5), "seconds": round(time.perf_counter() - t1, 2)})
            if callback is not None:
                callback(trace[-1])
    finally:
        hook.remove()
    train_seconds = time.perf_counter() - t1
    body_out = split_head({k: v.detach() for k, v in model.state_dict().items()}, (prefix,))[0]
    heads_out = {t: {f"{prefix}.{k}": p.detach() for k, p in h.items()} for t, h in heads.items()}
    cost = {"steps": o["steps"], "texts": len(texts), "examples_seen": o["steps"] * o["batch_size"],
            "teacher_forwards": len(texts) * len(zoo.experts), "teacher_seconds": round(teacher_seconds, 1),
            "train_seconds": round(train_seconds, 1)}
    meta = {**recipe, "head_prefixes": [prefix], "trace": trace, "cost": cost, "versions": package_versions()}
    save_parts(tmp, body_out, heads_out, meta)
    return Distilled(art.path, meta, experts=zoo.experts)


@dataclass
class Start:
    """Where a student starts from base: θ₀'s body with each task's head from the zoo (scored like a merge)."""

    body: dict
    heads: dict
    method: str = "base body + the zoo's heads"

    def body_for(self, task: str) -> dict:
        return self.body


def start_of(zoo: Zoo, init=None, seed: int = 0):
    """What :func:`distill_zoo` starts from: ``init`` (a merge), or the base body with the zoo's heads."""
    if init is not None:
        if getattr(init, "bodies", None) is not None:
            raise FusionkitError(f"{init.method} gives each task its own body, and a student has one; fix: start "
                                 "from a single-model merge (init=merge_zoo('ties', zoo), or consensus)")
        return init
    prefixes = tuple(zoo.experts[0].recipe["head_prefixes"])
    return Start(split_head(base_state(zoo.base, zoo.experts[0].recipe["labels"], seed), prefixes)[0], zoo.heads())


def distill_report(zoo: Zoo, evaluator: Evaluator, init=None, splits=("validation", "test"), **options) -> dict:
    """``fusionkit distill-zoo``'s JSON: the student's scores beside its starting point's, its KL curve's ends,
    and its cost (steps, texts, teacher forwards, seconds)."""
    from ..merging.zoo_merge import score_merged

    student = distill_zoo(zoo, init=init, **options)
    start = start_of(zoo, init, student.options["seed"])
    kl = [t["kl"] for t in student.trace]
    w = max(1, min(10, len(kl) // 2))  # one batch's KL is noisy: the mean of the first and the last w steps
    return {"zoo": zoo.name, "profile": zoo.profile.name, "experts": [e.name for e in zoo.experts],
            "precision": evaluator.precision, "options": student.options, "cost": student.cost,
            "kl_first": round(sum(kl[:w]) / w, 5), "kl_last": round(sum(kl[-w:]) / w, 5), "kl_window": w,
            "path": str(student.path),
            "student": score_merged(student, zoo, evaluator, splits),
            "start": {"from": start.method, "scores": score_merged(start, zoo, evaluator, splits)}}
