"""Merging a researcher's own checkpoints (``fusionkit merge METHOD --models A B [--base B0] [--data F] --out DIR``).

    report = merge_checkpoints("ties", ["runs/a", "runs/b"], "runs/merged", base="runs/base", data="dev.csv")

The checkpoints (:func:`~fusionkit.models.checkpoints.expert_from`) must share one architecture (checked first,
naming the first mismatch). Classifiers of one label space are merged whole - body and head; classifiers of
different label spaces merge their bodies and each keeps its own head, one loadable folder per model
(``out/<model>/``), as the zoo merges do (:mod:`fusionkit.models.heads`). Tensors stream from their safetensors files into ``out/model.safetensors``
(:func:`~fusionkit.merging.merge.merge_files`), and the first checkpoint's config and tokenizer files are copied
beside it, so ``out`` loads with ``from_pretrained``. ``data`` scores the merge against every input: a CSV
(``text``, ``label`` columns; labels named as in the models' ``id2label``) gives test accuracy on the split
:func:`~fusionkit.data.tasks.task_from` holds out, a text file (one text per line) gives perplexity of a causal
LM on every line (or, when RegMean or Fisher measure their statistics on the file, on the tenth held out from them);
each comparison carries a paired bootstrap interval. RegMean and Fisher measure their statistics on the
data's training split for every model (each model's own data would be the paper's setting: say so in the note).
``out`` is written atomically and never replaces an input. The base may be the bare pretrained backbone the
checkpoints came from (``BertModel``, no head - :func:`~fusionkit.models.checkpoints.base_from`): θ₀ of the body
comes from it, and the heads, which it has no θ₀ for, are averaged (the recipe's notes say so).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..core import manifest
from ..core.cache import atomic_dir, sha256_file, write_json
from ..core.errors import MergeError
from ..core.intervals import paired_bootstrap
from ..core.versioning import package_versions
from ..models.checkpoints import INDEX, PICKLES, WEIGHTS, Checkpoint, base_from, expert_from
from ..models.experts import check_experts
from ..models.heads import shared_label_space
from .merge import merge_files
from .registry import get_method
from .safetensors_io import LazyState, SafetensorsWriter, lazy_state
from .statedict import Renamed, backbone_names


def merge_checkpoints(method: str, models: list, out: str | Path, base=None, data: str | Path | None = None,
                      overwrite: bool = False, seed: int = 0, precision: str = "float32", max_length: int = 128,
                      device="auto", eval_all: bool = False, stats_files: list | None = None, **options) -> dict:
    """Merge checkpoint folders with a registered per-tensor method into ``out``; score on ``data`` if given -
    on the split :func:`~fusionkit.data.tasks.task_from` holds out, or with ``eval_all`` on every row (a
    scoring-only file, e.g. a benchmark's test set, that no model trained on)."""
    m = get_method(method)
    if m.level == "task":
        raise MergeError(f"{method} makes one model per task, named by the experts' tasks; checkpoints merge into "
                         f"one model here; fix: use a single-model method (e.g. consensus, ties) or merge zoo "
                         f"experts (fusionkit merge {method} --zoo multitask)")
    if m.level != "tensor":
        raise MergeError(f"{method} searches over a zoo's experts on dev data; fix: merge checkpoints with a "
                         "per-tensor method (fusionkit merge --list)")
    experts = [e if isinstance(e, Checkpoint) else expert_from(e) for e in models]
    base_e = None if base is None else (base if isinstance(base, Checkpoint) else base_from(base, experts[0]))
    if stats_files is not None and not m.stats:
        raise MergeError(f"{method} uses no statistics; fix: drop --stats, or merge with regmean / fisher")
    if stats_files is not None and len(stats_files) != len(experts):
        raise MergeError(f"got {len(stats_files)} statistics files for {len(experts)} models; fix: one per model, "
                         "in the order of --models")
    _check(experts, base_e, out, m, data, published_stats=stats_files is not None)
    if eval_all and m.stats and stats_files is None:
        raise MergeError(f"with eval_all every row of {data} is scored, so {m.name}'s {m.stats} statistics would be "
                         "measured on the rows it is scored on; fix: drop --eval-all (statistics on the training "
                         "split, scores on the held-out one) or use a data-free method")
    task = texts = None
    if data is not None:
        task, texts = _data(data, experts[0], eval_all, holdout=bool(m.stats) and stats_files is None)
    stats = None
    if stats_files is not None:  # published statistics instead of data: each checked against its model's hash
        from .stats_files import load_stats

        stats = [load_stats(f, m.stats, e)[0] for f, e in zip(stats_files, experts)]
        options.pop("fisher_variant", None)
    elif m.stats:
        from .statistics import expert_stats

        extra = {"variant": options.pop("fisher_variant", "sample")} if m.stats == "fisher" else {}
        stats = [expert_stats(e, m.stats, task, seed=seed, max_length=max_length, **extra) for e in experts]
    if "seed" in m.options:
        options["seed"] = seed
    t0 = time.perf_counter()
    base_view = None if base_e is None else _base_view(base_e, experts[0])
    bodies = experts[0].kind == "classifier" and not shared_label_space(experts)
    if bodies:  # different label spaces: merge the bodies, each model keeps its own head (as zoo merges do)
        heads = tuple(f"{h}." for h in experts[0].head_prefixes)
        options["names"] = [n for n in lazy_state([str(p) for p in experts[0].weight_files]) if not n.startswith(heads)]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        target = tmp / ("body.safetensors" if bodies else WEIGHTS)
        res = merge_files(method, [[str(p) for p in e.weight_files] for e in experts], str(target),
                          base=base_view, stats=stats, labels=[e.name for e in experts],
                          missing_base="average" if base_e is not None and base_e.kind == "backbone" else "error",
                          **options)
        folders = _per_model_folders(experts, target, tmp) if bodies else None
        seconds = time.perf_counter() - t0
        if not bodies:
            _copy_side_files(experts[0].path, tmp)
        notes = list(res.notes)
        if bodies:
            notes.append(f"the models predict different label sets, so their bodies were merged and each kept its own "
                         f"head: one loadable folder per model ({', '.join(folders)})")
        if stats_files is not None:
            notes.append(f"{m.stats} statistics read from {', '.join(str(f) for f in stats_files)}")
        elif m.stats:
            notes.append(f"{m.stats} statistics of every model were measured on the training split of {data} "
                         "(the paper measures each model on its own training data)"
                         + ("; scored on the held-out tenth" if experts[0].kind == "causal" and data else ""))
        scores = None if data is None else _score(experts, base_e, LazyState(tmp / WEIGHTS),
                                                  task if texts is None else None, texts,
                                                  precision, max_length, device)
        report = {
            "method": method, "options": dict(res.options), "kind": experts[0].kind,
            "inputs": [{"name": e.name, "source": e.recipe["source"],
                        "sha256": [sha256_file(p) for p in e.weight_files]} for e in experts],
            "base": None if base_e is None else base_e.recipe["source"], "data": None if data is None else str(data),
            "scored_on": None if data is None else "every row" if eval_all or task is None else "held-out split",
            "scores": scores, "notes": notes, "seconds": round(seconds, 2), "versions": package_versions(),
            **({"heads": "kept per model", "folders": folders} if bodies else {}),
        }
        write_json(tmp / "recipe.json", report)
        manifest.record(tmp, True, f"merged checkpoint: {method} of {', '.join(e.name for e in experts)}",
                        fix=f"the kit does not rebuild your outputs: merge again into {out} with --overwrite")
    return {**report, "out": str(out)}


def _per_model_folders(experts: list[Checkpoint], body_file: Path, tmp: Path) -> list[str]:
    """``tmp/<model>/``: the merged body and that model's own head, streamed tensor by tensor, with its config and
    tokenizer files, so each loads with ``from_pretrained``. The shared body file is removed afterwards."""
    body = LazyState(body_file)
    names: list[str] = []
    for e in experts:
        name = e.name if e.name not in names else f"{e.name}-{len(names)}"
        names.append(name)
        own = lazy_state([str(p) for p in e.weight_files])
        head = [n for n in own if n not in body]
        layout = {n: (body.dtype_name(n), body.shape(n)) for n in body}
        layout.update({n: (own.dtype_name(n), own.shape(n)) for n in head})
        (tmp / name).mkdir()
        with SafetensorsWriter(tmp / name / WEIGHTS, layout, metadata={"format": "pt"}) as writer:
            for n in body:
                writer.write(n, body[n])
            for n in head:
                writer.write(n, own[n])
        _copy_side_files(e.path, tmp / name)
    body_file.unlink()
    return names


def _base_view(base: Checkpoint, first: Checkpoint):
    """The base's tensors under the experts' names. A backbone (no head) is seen through
    :func:`~fusionkit.merging.statedict.backbone_names`; what it lacks must be the experts' head, nothing else."""
    state = lazy_state([str(p) for p in base.weight_files])
    if base.kind != "backbone":
        return state
    names = list(lazy_state([str(p) for p in first.weight_files]))
    view = Renamed(state, backbone_names(names, state))
    heads = tuple(first.head_prefixes)
    stray = [n for n in names if n not in view and not n.startswith(tuple(f"{h}." for h in heads))]
    if stray:
        raise MergeError(f"base {base.name} is a backbone without {stray[0]!r} (nor {len(stray) - 1} others), which "
                         f"is not {first.name}'s head {list(heads)}; fix: pass the backbone {first.name} was "
                         "fine-tuned from")
    return view


def _check(experts: list[Checkpoint], base: Checkpoint | None, out, m, data, published_stats: bool = False) -> None:
    check_experts(experts + ([base] if base is not None else []))
    kinds = {e.kind for e in experts}
    if len(kinds) > 1:
        raise MergeError(f"the models mix kinds {sorted(kinds)}; fix: merge classifiers with classifiers, "
                         "causal LMs with causal LMs")
    first = experts[0]
    if not shared_label_space(experts) and data is not None:
        e = next(e for e in experts if e.recipe["labels"] != first.recipe["labels"])
        raise MergeError(f"{e.name} predicts {e.recipe['labels']} but {first.name} {first.recipe['labels']}, so "
                         f"their bodies are merged and each keeps its head, and one file of data cannot score "
                         f"them all; fix: drop --data and score each output folder on its own data "
                         "(fk.evaluate), or merge models of one label space")
    if m.needs_base and base is None:
        raise MergeError(f"{m.name} needs the base model θ₀ the checkpoints were fine-tuned from; fix: pass "
                         "--base FOLDER (base= in Python): the checkpoint they were fine-tuned from, with or without its head")
    if m.stats and data is None and not published_stats:
        raise MergeError(f"{m.name} needs {m.stats} statistics measured on data; fix: pass --data (a CSV for "
                         "classifiers, a text file for causal LMs) or --stats FILES written by fusionkit stats")
    target = Path(out).resolve()
    for e in experts + ([base] if base is not None else []):
        if target == e.path.resolve() or e.path.resolve() in target.parents:
            raise MergeError(f"--out {out} is (inside) the input {e.path}; fix: write the merge to a new folder")


def _data(data, first: Checkpoint, eval_all: bool = False, holdout: bool = False):
    """``(task, texts)``: a classifier's task (scored on its held-out split, or every row with ``eval_all``); a
    causal LM's texts - every line, or with ``holdout`` (statistics are measured on the file) the held-out tenth,
    the rest being the task whose training split the statistics read."""
    from ..models.checkpoints import check_data_format, checkpoint_task

    if first.kind == "causal" and not holdout:
        from ..models.perplexity import read_texts

        return None, read_texts(check_data_format(first, data))
    task = checkpoint_task(first, data)
    if first.kind == "causal":
        return task, list(task.data["test"]["text"])
    if eval_all:  # every row is the test split: the same rows, labels checked by task_from
        import datasets

        every = datasets.concatenate_datasets([task.data[s] for s in ("train", "validation", "test")])
        task = type(task)(task.name, datasets.DatasetDict(train=every, validation=every, test=every),
                          task.metric, task.description)
    return task, None


def _score(experts, base, merged_state, task, texts, precision, max_length, device) -> dict:
    """Each system's score on the held-out data, and the merge minus each input with a paired interval."""
    systems = {"merged": dict(merged_state.items()), **{e.name: e.state_dict() for e in experts}}
    if base is not None and base.kind != "backbone":  # a backbone has no head to be scored with
        systems[f"base {base.name}"] = base.state_dict()
    model, tokenizer = experts[0].load(device)
    if task is not None:
        from ..models.evaluator import Evaluator

        ev = Evaluator(model, tokenizer, max_length=max_length, device=device, precision=precision)
        per = {k: ev.correct(task, "test", params=s) for k, s in systems.items()}
        scores = {k: {"accuracy": float(v.mean()), "examples": len(v)} for k, v in per.items()}
        chance = task.chance("test")
    else:
        from ..models.perplexity import perplexity

        res = {k: perplexity(model, tokenizer, texts, params=s, max_length=max_length, device=device)
               for k, s in systems.items()}
        per = {k: r["per_text"] for k, r in res.items()}  # per-text NLL: lower is better
        scores = {k: {"perplexity": r["perplexity"], "tokens": r["tokens"]} for k, r in res.items()}
        chance = None
    for k in systems:
        if k != "merged":
            scores[k]["merged_minus_this"] = paired_bootstrap(per["merged"], per[k])
    return {"metric": "accuracy" if task is not None else "perplexity", "chance": chance, "systems": scores}


def _copy_side_files(source: Path, dest: Path) -> None:
    """Config, tokenizer and generation files of the first model, so the merge loads with from_pretrained."""
    skip = {INDEX, "recipe.json", *PICKLES}  # weights are the merge's; a kit recipe would describe the input
    for f in source.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model", ".jinja") and f.name not in skip \
                and not f.name.startswith("."):
            shutil.copy2(f, dest / f.name)
