"""RegMean's claims (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models"):
RegMean > Fisher averaging > simple averaging when experts of different tasks are merged (heads kept per task),
the multi-task model above all of them (the upper bound), and, where the experts share one label space (non-IID
partitions of one task), RegMean against the logit ensemble it tries to approach in one forward pass.

Choices made on dev and reported with the rows: RegMean's α from :data:`ALPHAS`, Fisher's normalisation (per-model
L2, as MergeLM / FusionBench) on or off. Test is scored once per chosen model.
"""
from __future__ import annotations

import numpy as np

from ..merging.zoo_merge import Merged, ensemble_members, merge_zoo
from ..models.scorer import Scorer
from .table import Row, compare

ALPHAS = (0.5, 0.9, 1.0)
MARGIN = 0.05  # "approaches": RegMean no more than this far below the ensemble (a non-inferiority margin)
PAPER = "GLUE tasks, RoBERTa/T5, heads kept; 5 seeds"
PAPER_PARTITIONS = "non-IID partitions of one dataset, heads merged"


def correct(zoo, ev, body: dict, heads: dict | None, split: str) -> dict[str, np.ndarray]:
    """Per task, per example 0/1 of ``body`` with ``heads[task]`` (``None``: the state carries its own head)."""
    return Scorer(ev, zoo.tasks, heads, split=split, precision=ev.precision).correct(body, split)


def merged_correct(zoo, ev, merged: Merged, split: str) -> dict[str, np.ndarray]:
    """Per task, per example, whether ``merged`` is right: a merge, or anything with a ``body`` and ``heads``
    (the multi-task model, a distilled student, a student's starting point)."""
    if getattr(merged, "bodies", None) is not None:  # a task-specific merge (EMR, TALL): each task with its own body and head
        return {t: Scorer(ev, {t: zoo.tasks[t]}, {t: merged.heads[t]}, split=split, precision=ev.precision)
                .correct(merged.body_for(t), split)[t] for t in zoo.tasks if t in merged.heads}
    if getattr(merged, "heads_merged", False):
        return correct(zoo, ev, merged.state_for(next(iter(merged.heads))), None, split)
    return correct(zoo, ev, merged.body, merged.heads, split)


def mean(c: dict) -> float:
    return float(np.mean([v.mean() for v in c.values()]))


def choose(zoo, ev, method: str, grid: list[dict]) -> tuple[Merged, dict, dict]:
    """Merge once per option set of ``grid``; keep the best mean dev score. ``(merged, chosen options, dev scores)``."""
    best, dev = None, {}
    for opts in grid:
        m = merge_zoo(method, zoo, **opts)
        score = mean(merged_correct(zoo, ev, m, "validation"))
        dev[", ".join(f"{k}={v}" for k, v in opts.items())] = round(score, 4)
        if best is None or score > best[2]:
            best = (m, opts, score)
    return best[0], best[1], dev


def ensemble_correct(zoo, ev, split: str) -> dict[str, np.ndarray]:
    """The logit ensemble per example (:func:`fusionkit.merging.zoo_merge.ensemble_members`)."""
    members = ensemble_members(zoo)
    return {t: (ev.ensemble_logits(task, split, members[t]).argmax(-1) == ev.encode(task, split).labels).float().numpy()
            for t, task in zoo.tasks.items()}


def regmean_rows(profile: str = "smoke", seed: int = 0, quiet: bool = True) -> list[Row]:
    """The multitask zoo's rows (different tasks, heads kept) and the partitions zoo's (one label space)."""
    from ..models.zoo import build_zoo

    rows = []
    zoo = build_zoo("multitask", profile, seed=seed, quiet=quiet)
    ev = zoo.evaluator()
    avg = merge_zoo("average", zoo)
    reg, reg_opts, reg_dev = choose(zoo, ev, "regmean", [{"alpha": a} for a in ALPHAS])
    fis, fis_opts, fis_dev = choose(zoo, ev, "fisher", [{"normalize": n} for n in (False, True)])
    mtl = zoo.multitask_model(quiet=quiet)
    test = {"average": merged_correct(zoo, ev, avg, "test"), "RegMean": merged_correct(zoo, ev, reg, "test"),
            "Fisher": merged_correct(zoo, ev, fis, "test"),
            "multi-task model": correct(zoo, ev, mtl.body, mtl.heads, "test")}
    setting = (f"{zoo.profile.name}: {len(zoo.experts)} MiniLM experts ({', '.join(zoo.tasks)}), "
               f"{zoo.profile.train_examples or 'all'} train examples each, heads kept")
    reg_label = f"RegMean (α={reg_opts['alpha']})"
    fis_label = f"Fisher ({'normalised' if fis_opts['normalize'] else 'raw'})"
    kw = dict(paper=PAPER, setting=setting, profile=zoo.profile.name)
    rows.append(compare("RegMean > simple average", reg_label, test["RegMean"], "average", test["average"],
                        choices={"α (dev mean)": reg_dev}, **kw))
    rows.append(compare("RegMean > Fisher averaging", reg_label, test["RegMean"], fis_label, test["Fisher"],
                        choices={"α (dev mean)": reg_dev, "Fisher (dev mean)": fis_dev}, **kw))
    rows.append(compare("Fisher averaging > simple average", fis_label, test["Fisher"], "average", test["average"],
                        choices={"Fisher (dev mean)": fis_dev}, **kw))
    rows.append(compare("multi-task model > RegMean (the upper bound)", "multi-task model", test["multi-task model"],
                        reg_label, test["RegMean"], note="same recipe and budget as the experts", **kw))

    zoo = build_zoo("partitions", profile, seed=seed, quiet=quiet)
    ev = zoo.evaluator()
    avg = merge_zoo("average", zoo)
    reg, reg_opts, reg_dev = choose(zoo, ev, "regmean", [{"alpha": a} for a in ALPHAS])
    setting = (f"{zoo.profile.name}: {len(zoo.experts)} MiniLM experts on label-skewed partitions of topic "
               f"(20 classes), heads merged")
    kw = dict(paper=PAPER_PARTITIONS, setting=setting, profile=zoo.profile.name)
    reg_test = merged_correct(zoo, ev, reg, "test")
    rows.append(compare("RegMean > simple average (one label space)", f"RegMean (α={reg_opts['alpha']})", reg_test,
                        "average", merged_correct(zoo, ev, avg, "test"), choices={"α (dev mean)": reg_dev}, **kw))
    rows.append(compare(f"RegMean approaches the ensemble (within {MARGIN * 100:.0f} points)",
                        f"RegMean (α={reg_opts['alpha']})", reg_test, "ensemble", ensemble_correct(zoo, ev, "test"),
                        margin=MARGIN, **kw))
    return rows
