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
4. **Baselines** in the same run: no update; fine-tuning on d (LM loss; as the reference, its own lr and
   ``ft_steps`` steps under one AdamW); d prepended at test
   time (the upper bound, no training). "Before" numbers always come from the untouched teacher.

An empty definition makes teacher = student, so the loss is 0 and nothing moves (a unit test checks it).
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import replace

import torch

from ..core.errors import DistillError
from .config import METHODS, DistillConfig
from .entities import Entity, Probe, check_unique
from .probes import DriftMeter, check_tokenizer, gap_closed, score_probes, summarize
from .training import Target, distill, finetune_definition, kl_drop, prepare, target_kl
from .transfer import transfer_set

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


def _delta(after: list[dict], before: list[dict]) -> float | None:
    a, b = summarize(after)["acc"], summarize(before)["acc"]
    return None if a is None or b is None else a - b


def _aggregate(rows: list[dict], spec: list[dict], spec_before: list[dict], drift: list[float]) -> dict:
    """Own probes' scores, and specificity (after − before) over all specificity probes and, separately, over
    the well-known facts and the other entities' probes (which start near the model's prior, as in the paper)."""
    own = summarize(rows)
    after, before = summarize(spec), summarize(spec_before)
    is_fact = [r.get("kind") == "fact" for r in spec]
    part = lambda rs, fact: [r for r, f in zip(rs, is_fact) if f == fact]  # noqa: E731
    return {**{k: own[k] for k in ("explicit_acc", "implicit_acc", "acc", "gold_logprob", "gold_nll", "gold_ppl")},
            "specificity_acc": after["acc"], "specificity_before": before["acc"],
            "specificity_delta": None if after["acc"] is None else after["acc"] - before["acc"],
            "specificity_facts_delta": _delta(part(spec, True), part(spec_before, True)),
            "specificity_entities_delta": _delta(part(spec, False), part(spec_before, False)),
            "specificity_nll_delta": None if after["gold_nll"] is None else after["gold_nll"] - before["gold_nll"],
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
        raise DistillError("no entities to inject; fix: check --entities/--split/--limit")
    teacher = model.eval().requires_grad_(False)
    facts = facts[:cfg.facts]
    probes = [p for e in entities for p in e.probes]
    check_unique(probes + facts)  # every per-probe table below is keyed by uid, every per-entity one by name
    if len({e.name for e in entities}) < len(entities):
        raise DistillError("two entities share a name; fix: merge their probes into one Entity or rename one")
    fact_uids = {p.uid for p in facts}
    before = {r["uid"]: {**r, "kind": "fact" if r["uid"] in fact_uids else "entity"}
              for r in score_probes(teacher, tokenizer, probes + facts)}
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
        out[method]["spec"] += [{**r, "kind": before[r["uid"]]["kind"]} for r in score_probes(student, tokenizer, spec)]
        out[method]["spec_before"] += [before[p.uid] for p in spec]
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
    raw = {"no_update": {"rows": [before[p.uid] for p in probes], "spec": spec_base, "spec_before": spec_base,
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
    uid = lambda r: r.get("uid", r["ex_id"])  # noqa: E731 - rows saved before probes had a uid
    rows = [{"uid": uid(r), **{k: r[k] for k in ("ex_id", "entity", "probe_type")}} for r in raw["no_update"]["rows"]]
    for m in (m for m in METHODS if m in raw):
        by_id = {uid(r): r for r in raw[m]["rows"]}
        for row in rows:
            row[f"{m}_logprob"] = by_id[row["uid"]]["gold_logprob"]
            row[f"{m}_correct"] = by_id[row["uid"]]["correct"]
    return rows


CHOICE_COLUMNS = ("explicit_acc", "implicit_acc", "gold_nll", "gap_closed", "specificity_acc", "specificity_delta",
                  "drift")
SPAN_COLUMNS = ("gold_nll", "gold_ppl", "gap_closed", "specificity_acc", "specificity_nll_delta", "drift")


def format_table(report: dict) -> str:
    """The before / after / baseline table the CLI prints: accuracies when the entities have choice probes,
    else (ECBD's gold spans only) gold-span NLL and perplexity."""
    choice = any(r["acc"] is not None for r in report["results"].values())
    cols = CHOICE_COLUMNS if choice else SPAN_COLUMNS
    lines = [f"{'method':<11}" + "".join(f"{c:>18}" for c in cols)]
    for m in (m for m in METHODS if m in report["results"]):
        r = report["results"][m]
        lines.append(f"{m:<11}" + "".join(f"{'-' if r[c] is None else format(r[c], '.3f'):>18}" for c in cols))
    return "\n".join(lines)
