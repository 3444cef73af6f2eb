"""Knowledge propagation by context distillation (Padmanabhan et al., NeurIPS 2023, arXiv 2306.09306).

Teach a model a new entity's definition d so it can *use* it, not only recite it:

1. **Transfer set**: the base model continues d; K samples c_1..c_K (top-p 0.9, temperature 1, 32 new tokens),
   each mentioning the entity (resampled, else the name is put in front). Cached on disk by a hash of the model,
   the definition, the settings and the seed.
2. **Distillation**: the frozen teacher reads [d; c], the student only c. With z the logits at the positions P
   that predict continuation tokens 2..L (optionally only those after the entity mention),

       L = τ² / |P| · Σ_{i∈P} KL( softmax(z_t,i / τ) ‖ softmax(z_s,i / τ) ),   τ = 2.

   The teacher's distributions are computed once per continuation and kept; each step is one student pass.
   AdamW (optionally reset per continuation) for ``steps`` steps on each continuation.
3. **Single entity**: one student, restored from the pristine weights (the teacher's own state dict) before each
   entity. **Multi entity**: every (entity, continuation) pair, shuffled by seed, into one student.
4. **Baselines** in the same run: no update; fine-tuning on d (LM loss, same steps and lr); d prepended at test
   time (the upper bound, no training). "Before" numbers always come from the untouched teacher.

An empty definition makes teacher = student, so the loss is 0 and nothing moves (a unit test checks it).
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .cache import cache_dir, read_json, stable_hash, write_json
from .entities import Entity, Probe
from .probes import DriftMeter, check_tokenizer, context_ids, gap_closed, score_probes, summarize, token_ids

METHODS = ("no_update", "finetune", "distill", "prepend")
CALLBACK_KEYS = ("step", "kl", "heldout_kl", "explicit_acc", "implicit_acc")


@dataclass(frozen=True)
class DistillConfig:
    continuations: int = 5  # trained on, per entity
    heldout: int = 1  # extra continuations per entity, never trained on (held-out KL)
    max_new_tokens: int = 32
    top_p: float = 0.9
    temperature: float = 1.0
    steps: int = 5  # per continuation
    lr: float = 3e-4  # chosen on dev entities from 3e-5 ... 1e-3 (benchmarks/distill_full.py)
    tau: float = 2.0
    reset_optimizer: bool = True  # a fresh AdamW for every continuation, as in the paper
    params: str = "all"  # all | mlp | layers:A-B (inclusive)
    clip: float = 1.0  # max gradient norm; 0 = no clipping
    after_mention: bool = False  # distil only positions after the entity mention
    weight_decay: float = 0.0  # >0 would move weights even at zero loss
    probe_every: int = 5  # log probe accuracy and held-out KL every this many steps (0 = never)
    other_entities: int = 8  # other entities whose probes measure specificity (single-entity mode)
    facts: int = 30  # well-known-fact probes for specificity
    limit: int | None = None  # entities per run (None = all)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


SETTINGS = {
    "smoke": DistillConfig(continuations=2, heldout=1, max_new_tokens=16, steps=2, lr=1e-4, probe_every=2,
                           other_entities=1, facts=6, limit=2),
    "full": DistillConfig(),
}


def settings(profile: str = "smoke", **changes) -> DistillConfig:
    if profile not in SETTINGS:
        raise ValueError(f"unknown profile {profile!r}; fix: use one of {', '.join(SETTINGS)}")
    cfg = replace(SETTINGS[profile], **{k: v for k, v in changes.items() if v is not None})
    if cfg.continuations < 1 or cfg.steps < 1 or cfg.lr <= 0 or cfg.tau <= 0:
        raise ValueError("continuations and steps must be >= 1, lr and tau > 0")
    return cfg


# ------------------------------------------------------------------------------------------- transfer set
def _mentions(name: str, text: str) -> bool:
    return name.lower() in text.lower()


@torch.no_grad()
def _sample(model, tokenizer, definition: str, n: int, cfg: DistillConfig) -> list[str]:
    prompt = token_ids(tokenizer, definition) or [tokenizer.eos_token_id]
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=cfg.top_p,
                         top_k=0, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o[len(prompt):], skip_special_tokens=True) for o in out]


def transfer_set(model, tokenizer, entity: Entity, cfg: DistillConfig, model_id: str = "",
                 rounds: int = 2) -> list[str]:
    """``cfg.continuations + cfg.heldout`` continuations of the definition, each mentioning the entity.

    With a ``model_id`` the set is cached under ``<cache>/transfer/`` (atomic JSON, keyed by model, definition,
    sampling settings and seed), so a rerun trains on the same text.
    """
    n = cfg.continuations + cfg.heldout
    recipe = {"model": model_id, "entity": entity.name, "definition": entity.definition, "n": n,
              "max_new_tokens": cfg.max_new_tokens, "top_p": cfg.top_p, "temperature": cfg.temperature,
              "seed": cfg.seed, "mention": "resample x2, then continue from the name"}
    path = cache_dir("transfer") / f"{stable_hash(recipe)}.json" if model_id else None
    if path is not None and path.exists():
        return read_json(path)["continuations"]
    torch.manual_seed(cfg.seed + int(stable_hash(entity.name, 8), 16))
    good = []
    for _ in range(rounds):
        good += [c for c in _sample(model, tokenizer, entity.definition, n, cfg) if _mentions(entity.name, c)]
        if len(good) >= n:
            break
    if len(good) < n:
        # Still too few mentions: put the name in front, and let the model go on from it so the text stays fluent.
        prompt = f"{entity.definition} {entity.name}"
        good += [f" {entity.name}{c}" for c in _sample(model, tokenizer, prompt, n - len(good), cfg)]
    conts = good[:n]
    if path is not None:
        write_json(path, {"recipe": recipe, "continuations": conts})
    return conts


# ------------------------------------------------------------------------------------------- distillation
@dataclass
class Target:
    """One continuation ready for distillation: the student's input and the teacher's fixed distributions."""

    entity: str
    text: str
    ids: torch.Tensor  # [1, L] the student's input (the continuation alone)
    positions: torch.Tensor  # student positions in P
    teacher_logp: torch.Tensor  # [|P|, V] log softmax(z_t / τ), computed once


def _mention_end(tokenizer, text: str, name: str) -> int:
    """Index of the first token after the first mention of ``name`` in ``text`` (0 if it is not there)."""
    at = text.lower().find(name.lower())
    if at < 0:
        return 0
    end = at + len(name)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sum(1 for s, _ in offsets if s < end)


@torch.no_grad()
def make_target(teacher, tokenizer, entity: Entity, continuation: str, cfg: DistillConfig) -> Target:
    d, c = context_ids(tokenizer, entity.definition, continuation)
    if len(c) < 2:
        raise ValueError(f"continuation {continuation!r} of {entity.name!r} has fewer than 2 tokens")
    start = 0
    if cfg.after_mention:
        text = (" " + continuation.lstrip()) if d else continuation
        start = min(max(0, _mention_end(tokenizer, text, entity.name) - 1), len(c) - 2)
    dev = next(teacher.parameters()).device
    # Student position i (i < L-1) predicts token i+1 of c; the teacher sees it at len(d) + i.
    positions = torch.arange(start, len(c) - 1)
    logits = teacher(input_ids=torch.tensor([d + c], device=dev)).logits[0, len(d) + positions.to(dev)]
    return Target(entity.name, continuation, torch.tensor([c]), positions,
                  F.log_softmax(logits.float() / cfg.tau, -1))


def prepare(teacher, tokenizer, entity: Entity, continuations: list[str], cfg: DistillConfig) -> list[Target]:
    if not continuations:
        raise ValueError(f"empty transfer set for {entity.name!r}; fix: sample at least one continuation "
                         "(continuations >= 1) or pass non-empty texts")
    teacher.eval()
    return [make_target(teacher, tokenizer, entity, c, cfg) for c in continuations]


def kl_loss(student_logits: torch.Tensor, teacher_logp: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²/|P| Σ_i KL(p_t,i ‖ p_s,i), both at temperature τ (``batchmean`` divides by |P|)."""
    s = F.log_softmax(student_logits.float() / tau, -1)
    return tau ** 2 * F.kl_div(s, teacher_logp, log_target=True, reduction="batchmean")


def target_kl(model, target: Target, tau: float) -> torch.Tensor:
    dev = next(model.parameters()).device
    logits = model(input_ids=target.ids.to(dev)).logits[0, target.positions.to(dev)]
    return kl_loss(logits, target.teacher_logp.to(dev), tau)


@torch.no_grad()
def position_kl(model, target: Target, tau: float = 2.0) -> torch.Tensor:
    """τ² KL(p_t ‖ p_s) at each distilled position (its mean is the loss): where the definition matters."""
    dev = next(model.parameters()).device
    s = F.log_softmax(model(input_ids=target.ids.to(dev)).logits[0, target.positions.to(dev)].float() / tau, -1)
    t = target.teacher_logp.to(dev)
    return tau ** 2 * (t.exp() * (t - s)).sum(-1).cpu()


def select_params(model, which: str = "all") -> list[torch.nn.Parameter]:
    """The parameters that train: ``all``, ``mlp`` (MLP blocks only) or ``layers:A-B`` (decoder layers A..B)."""
    if which == "all":
        keep = lambda name: True  # noqa: E731
    elif which == "mlp":
        keep = lambda name: ".mlp." in name  # noqa: E731
    elif which.startswith("layers:"):
        try:
            lo, hi = (int(x) for x in which[7:].split("-"))
        except ValueError:
            raise ValueError(f"bad params {which!r}; fix: layers:A-B, e.g. layers:10-20") from None
        keep = lambda name: any(f".layers.{i}." in name for i in range(lo, hi + 1))  # noqa: E731
    else:
        raise ValueError(f"unknown params {which!r}; fix: all, mlp or layers:A-B")
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        if p.requires_grad:
            chosen.append(p)
    if not chosen:
        raise ValueError(f"params {which!r} selects no parameter of this model")
    return chosen


def _train(student, batches, cfg: DistillConfig, loss_fn, on_probe=None, callback=None, step0: int = 0):
    """Shared loop: ``batches`` is a list of items, each trained ``cfg.steps`` steps (optimizer reset per item)."""
    params = select_params(student, cfg.params)
    student.train()
    opt, history, step = None, [], step0
    for item in batches:
        if opt is None or cfg.reset_optimizer:
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        for _ in range(cfg.steps):
            loss = loss_fn(student, item)
            # At exactly zero loss the student already matches; the gradient there is rounding noise that
            # Adam's normalisation would blow up into lr-sized steps, so do not step at all.
            if float(loss.detach()) != 0.0:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                opt.step()
            entry = {"step": step, "kl": float(loss.detach()), "entity": getattr(item, "entity", None)}
            step += 1
            if on_probe is not None and cfg.probe_every and step % cfg.probe_every == 0:
                entry.update(on_probe(student))
            history.append(entry)
            if callback is not None:
                callback({k: entry[k] for k in CALLBACK_KEYS if k in entry})
    student.eval()
    return history


def distill(student, targets: list[Target], cfg: DistillConfig, on_probe=None, callback=None, step0: int = 0):
    """Context distillation on ``targets`` in the given order; returns one ``{"step", "kl", ...}`` per step."""
    return _train(student, targets, cfg, lambda m, t: target_kl(m, t, cfg.tau), on_probe, callback, step0)


def kl_drop(curve: list[dict], steps: int) -> float:
    """Mean fall of the KL on a continuation while the student trains on it: KL(first step) − KL(last step).

    The curve runs through many continuations (and entities), so its first and last points are on different
    text; comparing within each block of ``steps`` steps on one continuation is the like-for-like reading.
    """
    blocks = [curve[i:i + steps] for i in range(0, len(curve), steps)]
    return sum(b[0]["kl"] - b[-1]["kl"] for b in blocks) / len(blocks)


def finetune_definition(student, tokenizer, entity: Entity, cfg: DistillConfig) -> list[dict]:
    """The fine-tuning baseline: LM loss on the definition, as many steps (and resets) as distillation takes."""
    ids = torch.tensor([token_ids(tokenizer, entity.definition)], device=next(student.parameters()).device)
    if ids.shape[1] < 2:
        raise ValueError(f"definition of {entity.name!r} is too short to fine-tune on")
    hist = _train(student, [entity] * cfg.continuations, cfg, lambda m, _: m(input_ids=ids, labels=ids).loss)
    return [{"step": h["step"], "loss": h["kl"]} for h in hist]


# ------------------------------------------------------------------------------------------- a whole run
def _probe_logger(tokenizer, probes: list[Probe], heldout: list[Target], tau: float):
    def on_probe(model) -> dict:
        s = summarize(score_probes(model, tokenizer, probes))
        out = {"explicit_acc": s["explicit_acc"], "implicit_acc": s["implicit_acc"]}
        if heldout:
            with torch.no_grad():
                model.eval()
                out["heldout_kl"] = float(torch.stack([target_kl(model, t, tau) for t in heldout]).mean())
                model.train()
        return out
    return on_probe


def _aggregate(rows: list[dict], spec: list[dict], spec_before: list[dict], drift: list[float]) -> dict:
    own = summarize(rows)
    after, before = summarize(spec), summarize(spec_before)
    return {**{k: own[k] for k in ("explicit_acc", "implicit_acc", "acc", "gold_logprob", "gold_nll")},
            "specificity_acc": after["acc"], "specificity_before": before["acc"],
            "specificity_delta": None if after["acc"] is None else after["acc"] - before["acc"],
            "specificity_nll_delta": None if after["acc"] is None else after["gold_nll"] - before["gold_nll"],
            "drift": sum(drift) / len(drift) if drift else 0.0, "probes": own["n"]}


def results_from(raw: dict) -> dict:
    """The results table from per-probe rows (``report["raw"]``); raw parts of several runs can be concatenated."""
    results = {m: _aggregate(**r) for m, r in raw.items()}
    pre, up = results["no_update"]["gold_nll"], results["prepend"]["gold_nll"]
    for r in results.values():
        r["gap_closed"] = gap_closed(pre, r["gold_nll"], up)
    return results


def run(model, tokenizer, entities: list[Entity], facts: list[Probe], cfg: DistillConfig, *, multi: bool = False,
        model_id: str = "", callback=None, finetune: bool = True, quiet: bool = True) -> dict:
    """No update, fine-tuning, distillation and prepend on ``entities``; the report the CLI and notebook print.

    ``model`` is the teacher and the pristine copy: it is never trained. One student copy is made and restored
    from ``model.state_dict()`` before each entity (single) or once per method (``multi``). Specificity is
    measured on the well-known facts plus, in single mode, the probes of up to ``cfg.other_entities`` other
    entities of this run (in multi mode every entity is edited, so only the facts count).
    """
    from tqdm.auto import tqdm

    check_tokenizer(tokenizer)
    t0 = time.perf_counter()
    entities = entities[:cfg.limit] if cfg.limit else entities
    if not entities:
        raise ValueError("no entities to inject; fix: check --entities/--split/--limit")
    teacher = model.eval().requires_grad_(False)
    facts = facts[:cfg.facts]
    probes = [p for e in entities for p in e.probes]
    before = {r["ex_id"]: r for r in score_probes(teacher, tokenizer, probes + facts)}
    prepend = score_probes(teacher, tokenizer, probes, {e.name: e.definition for e in entities})
    drift = DriftMeter(teacher, tokenizer)
    transfer, targets, heldout = {}, {}, {}
    for e in tqdm(entities, desc="transfer sets", disable=quiet):
        transfer[e.name] = transfer_set(teacher, tokenizer, e, cfg, model_id)
        tg = prepare(teacher, tokenizer, e, transfer[e.name], cfg)
        targets[e.name], heldout[e.name] = tg[:cfg.continuations], tg[cfg.continuations:]
    student = copy.deepcopy(teacher)
    pristine = teacher.state_dict()
    trained = ("finetune", "distill") if finetune else ("distill",)
    out = {m: {"rows": [], "spec": [], "spec_before": [], "drift": []} for m in trained}
    curves = {"distill": [], "finetune": []}

    def measure(method, own, spec):
        out[method]["rows"] += score_probes(student, tokenizer, own)
        out[method]["spec"] += score_probes(student, tokenizer, spec)
        out[method]["spec_before"] += [before[p.ex_id] for p in spec]
        out[method]["drift"].append(drift(student))

    if multi:
        pairs = [t for e in entities for t in targets[e.name]]
        random.Random(cfg.seed).shuffle(pairs)
        student.load_state_dict(pristine)
        logger = _probe_logger(tokenizer, probes, [t for h in heldout.values() for t in h], cfg.tau)
        curves["distill"] = distill(student, pairs, cfg, logger, callback)
        measure("distill", probes, facts)
        if finetune:
            student.load_state_dict(pristine)
            for e in entities:
                curves["finetune"] += finetune_definition(student, tokenizer, e, cfg)
            measure("finetune", probes, facts)
    else:
        for i, e in enumerate(tqdm(entities, desc="entities", disable=quiet)):
            others = [p for o in (entities[i + 1:] + entities[:i])[:cfg.other_entities] for p in o.probes]
            student.load_state_dict(pristine)
            logger = _probe_logger(tokenizer, e.probes, heldout[e.name], cfg.tau)
            curves["distill"] += distill(student, targets[e.name], cfg, logger, callback, len(curves["distill"]))
            measure("distill", e.probes, others + facts)
            if finetune:
                student.load_state_dict(pristine)
                curves["finetune"] += finetune_definition(student, tokenizer, e, cfg)
                measure("finetune", e.probes, others + facts)
    spec_base = out["distill"]["spec_before"]
    raw = {"no_update": {"rows": [before[p.ex_id] for p in probes], "spec": spec_base, "spec_before": spec_base,
                         "drift": []},
           **out, "prepend": {"rows": prepend, "spec": spec_base, "spec_before": spec_base, "drift": []}}
    kls = [h["kl"] for h in curves["distill"]]
    del student
    return {"options": {**cfg.to_dict(), "multi": multi, "model": model_id, "entities": [e.name for e in entities]},
            "results": results_from(raw), "curves": curves, "transfer": transfer, "raw": raw,
            "kl_first": kls[0], "kl_last": kls[-1], "kl_drop": kl_drop(curves["distill"], cfg.steps),
            "seconds": time.perf_counter() - t0}


def multi_entity_curve(model, tokenizer, entities: list[Entity], facts: list[Probe], cfg: DistillConfig,
                       sizes=(1, 2, 5, 10), model_id: str = "", runner=None) -> list[dict]:
    """Accuracy and specificity after injecting the first n entities at once, for each n in ``sizes``.

    ``runner`` stands in for :func:`run` (same arguments, a report with ``"results"``): the benchmark passes one
    that saves each point."""
    rows = []
    for n in sizes:
        if n > len(entities):
            break
        r = (runner or run)(model, tokenizer, entities[:n], facts, replace(cfg, limit=None), multi=True,
                            model_id=model_id, finetune=False)
        d = r["results"]["distill"]
        rows.append({"n_entities": n, **{k: d[k] for k in ("explicit_acc", "implicit_acc", "specificity_acc",
                                                           "specificity_delta", "drift")}})
    return rows


def probe_rows(report: dict) -> list[dict]:
    """One row per probe of the injected entities: each method's gold log-prob and whether it was right."""
    raw = report["raw"]
    rows = [{k: r[k] for k in ("ex_id", "entity", "probe_type")} for r in raw["no_update"]["rows"]]
    for m in (m for m in METHODS if m in raw):
        by_id = {r["ex_id"]: r for r in raw[m]["rows"]}
        for row in rows:
            row[f"{m}_logprob"] = by_id[row["ex_id"]]["gold_logprob"]
            row[f"{m}_correct"] = by_id[row["ex_id"]]["correct"]
    return rows


def format_table(report: dict) -> str:
    """The before / after / baseline table the CLI prints."""
    cols = ("explicit_acc", "implicit_acc", "gold_nll", "gap_closed", "specificity_acc", "specificity_delta",
            "drift")
    lines = [f"{'method':<11}" + "".join(f"{c:>18}" for c in cols)]
    for m in (m for m in METHODS if m in report["results"]):
        r = report["results"][m]
        lines.append(f"{m:<11}" + "".join(f"{'-' if r[c] is None else format(r[c], '.3f'):>18}" for c in cols))
    return "\n".join(lines)
