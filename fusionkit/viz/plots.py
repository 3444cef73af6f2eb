"""Pure plotting functions: results in, ``plotly.graph_objects.Figure`` out (no model code, no state).

Widgets (:mod:`fusionkit.viz.widgets`) wrap these same figures in ``FigureWidget``s, so an executed notebook's
static figure and its live explorer always draw the same thing.
"""
from __future__ import annotations

import plotly.graph_objects as go


def expert_task_heatmap(zoo_dict: dict, split: str = "test", relative: bool = False) -> go.Figure:
    """Expert x task matrix from ``Zoo.to_dict()``; ``relative`` shows the gain over the task's chance level."""
    tasks = list(zoo_dict["tasks"])
    experts = [e["name"] for e in zoo_dict["experts"]]
    z, text = [], []
    for e in zoo_dict["experts"]:
        row = [e["scores"][t][split] - (zoo_dict["tasks"][t]["chance"] if relative else 0) for t in tasks]
        z.append(row)
        text.append([f"{v:+.2f}" if relative else f"{v:.2f}" for v in row])
    fig = go.Figure(go.Heatmap(z=z, x=tasks, y=experts, text=text, texttemplate="%{text}",
                               colorscale="RdBu" if relative else "Viridis", zmid=0 if relative else None,
                               colorbar=dict(title="gain over chance" if relative else split)))
    fig.update_layout(title=f"zoo {zoo_dict['zoo']} ({zoo_dict['profile']}): {split} accuracy"
                            + (" minus chance" if relative else ""),
                      xaxis_title="evaluated on task", yaxis_title="expert", yaxis_autorange="reversed",
                      height=120 + 40 * len(experts), width=200 + 110 * len(tasks))
    return fig


def label_balance(task, split: str = "train") -> go.Figure:
    """Bar chart of the number of examples per label in one split of a task."""
    counts = task.label_counts(split)
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values())))
    fig.update_layout(title=f"{task.name}: labels in {split} ({sum(counts.values())} examples)",
                      xaxis_title="label", yaxis_title="examples", height=320)
    return fig


METRIC_LABELS = {"accuracy": "accuracy", "log_likelihood": "log-likelihood per token (nats)"}


def metric_label(metric: str) -> str:
    """How a task metric is named on an axis: accuracy, or a text task's log-likelihood per token."""
    return METRIC_LABELS.get(metric, metric)


def method_bars(results: dict[str, dict[str, float]], chance: dict[str, float] | None = None,
                title: str = "test accuracy per task", metric: str = "accuracy") -> go.Figure:
    """Grouped bars: ``results[label][task] = score`` (methods, experts, the ensemble), chance as markers.
    Accuracy is drawn on [0, 1]; a log-likelihood (negative, higher is better) on the range its values need."""
    fig = go.Figure()
    for label, scores in results.items():
        tasks = list(scores)
        fig.add_bar(name=label, x=tasks, y=[scores[t] for t in tasks])
    if chance:
        fig.add_scatter(name="chance", x=list(chance), y=list(chance.values()), mode="markers",
                        marker=dict(symbol="line-ew-open", size=28, color="black", line=dict(width=2)))
    fig.update_layout(barmode="group", title=title, yaxis_title=metric_label(metric), height=380,
                      **({"yaxis_range": [0, 1]} if metric == "accuracy" else {}))
    return fig


def sweep_curve(rows: list[dict], param: str, title: str | None = None, per_task: bool = True) -> go.Figure:
    """Score against one option's value: the mean over tasks (thick) and each task (thin)."""
    xs = [r[param] for r in rows]
    fig = go.Figure()
    if per_task:
        for t in rows[0]["scores"]:
            fig.add_scatter(x=xs, y=[r["scores"][t] for r in rows], name=t, mode="lines+markers", line=dict(width=1))
    fig.add_scatter(x=xs, y=[r["mean"] for r in rows], name="mean", mode="lines+markers", line=dict(width=4))
    fig.update_layout(title=title or f"validation accuracy against {param}", xaxis_title=param,
                      yaxis_title="accuracy", height=360)
    return fig


def matrix_heatmap(z, labels_x, labels_y, title: str, colorscale: str = "Viridis", zmid=None, fmt: str = ".2f") -> go.Figure:
    """A labelled heat-map with values written in the cells."""
    z = [[float(v) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=labels_x, y=labels_y, colorscale=colorscale, zmid=zmid,
                               text=[[format(v, fmt) for v in row] for row in z], texttemplate="%{text}"))
    fig.update_layout(title=title, yaxis_autorange="reversed", height=120 + 40 * len(labels_y))
    return fig


def conflict_bars(conflicts: dict[str, float], title: str = "sign conflicts among trimmed task vectors") -> go.Figure:
    fig = go.Figure(go.Bar(x=list(conflicts), y=list(conflicts.values())))
    fig.update_layout(title=title, yaxis_title="fraction of shared entries with opposite signs", height=340)
    return fig


def search_trace(histories: dict[str, list[dict]], title: str = "dev score per evaluation") -> go.Figure:
    """One colour per search: each evaluation's dev score (dots) and the best so far (line)."""
    fig = go.Figure()
    for i, (label, hist) in enumerate(histories.items()):
        add_search_trace(fig, label, i)
        extend_search_trace(fig, i, hist)
    fig.update_layout(title=title, xaxis_title="evaluation", yaxis_title="dev accuracy", height=380)
    return fig


def add_search_trace(fig: go.Figure, label: str, i: int) -> None:
    color = _COLORS[i % len(_COLORS)]
    fig.add_scatter(x=[], y=[], mode="markers", name=f"{label}", marker=dict(color=color, size=6, opacity=0.5),
                    legendgroup=label)
    fig.add_scatter(x=[], y=[], mode="lines", name=f"{label} best so far", line=dict(color=color, width=3),
                    legendgroup=label)


def extend_search_trace(fig: go.Figure, i: int, entries: list[dict]) -> None:
    """Append evaluations to search ``i``'s two traces (points, best-so-far line)."""
    points, best = fig.data[2 * i], fig.data[2 * i + 1]
    xs, ys = list(points.x or ()), list(points.y or ())
    for e in entries:
        xs.append(e["eval"])
        ys.append(e["dev"])
    points.x, points.y = xs, ys
    best.x, best.y = xs, [max(ys[:k + 1]) for k in range(len(ys))]


_COLORS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692"]


def weight_bars(weights: dict[str, dict[str, float]], title: str = "interpolation weights found") -> go.Figure:
    """Grouped bars: ``weights[search][expert] = w``."""
    fig = go.Figure()
    for label, w in weights.items():
        fig.add_bar(name=label, x=list(w), y=list(w.values()))
    fig.update_layout(barmode="group", title=title, yaxis_title="weight", height=360)
    return fig


def evolution_curve(history: list[dict], title: str = "Evolver: dev score per generation") -> go.Figure:
    """Best (the merged population, or the best individual) and mean dev score, and the acceptance rate."""
    fig = go.Figure()
    fig.add_scatter(x=[], y=[], name="best (population)", mode="lines+markers", line=dict(width=3))
    fig.add_scatter(x=[], y=[], name="mean of candidates", mode="lines+markers", line=dict(dash="dot"))
    fig.add_bar(x=[], y=[], name="accepted offspring (fraction)", yaxis="y2", opacity=0.3)
    fig.update_layout(title=title, xaxis_title="generation", yaxis_title="dev accuracy", height=380,
                      yaxis2=dict(overlaying="y", side="right", range=[0, 1], title="acceptance"))
    extend_evolution_curve(fig, history)
    return fig


def extend_evolution_curve(fig: go.Figure, entries: list[dict]) -> None:
    best, mean, acc = fig.data
    for trace, key in ((best, "dev"), (mean, "mean"), (acc, "acceptance")):
        trace.x = list(trace.x or ()) + [e["generation"] for e in entries]
        trace.y = list(trace.y or ()) + [e[key] or 0 for e in entries]


def kl_curve(history: list[dict], title: str = "context distillation: KL per step") -> go.Figure:
    """Training KL per step (and held-out KL and probe accuracy where logged) against the step.

    ``history`` entries: ``{"step", "kl"}`` plus, at the probe interval, any of ``"heldout_kl"``,
    ``"explicit_acc"``, ``"implicit_acc"`` (accuracies on a right-hand axis).
    """
    fig = go.Figure()
    fig.add_scatter(x=[], y=[], name="train KL", mode="lines", line=dict(width=2))
    fig.add_scatter(x=[], y=[], name="held-out KL", mode="lines+markers", line=dict(dash="dot"))
    fig.add_scatter(x=[], y=[], name="explicit probe acc.", mode="lines+markers", yaxis="y2")
    fig.add_scatter(x=[], y=[], name="implicit probe acc.", mode="lines+markers", yaxis="y2")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="KL (nats, τ²-scaled)", height=380,
                      yaxis2=dict(overlaying="y", side="right", range=[0, 1], title="probe accuracy"))
    extend_kl_curve(fig, history)
    return fig


_KL_KEYS = ("kl", "heldout_kl", "explicit_acc", "implicit_acc")


def extend_kl_curve(fig: go.Figure, entries: list[dict]) -> None:
    """Append logged steps to :func:`kl_curve`'s four traces; a key missing from an entry adds no point."""
    for trace, key in zip(fig.data, _KL_KEYS):
        new = [(e["step"], e[key]) for e in entries if e.get(key) is not None]
        if new:
            trace.x = list(trace.x or ()) + [s for s, _ in new]
            trace.y = list(trace.y or ()) + [v for _, v in new]


def entropy_curve(tasks: list[str], history: list[dict] = (), title: str = "AdaMerging: dev entropy per step"
                  ) -> go.Figure:
    """AdaMerging's objective per step: the summed prediction entropy and each task's (``{"step", "entropy",
    "per_task": {task: H}}`` entries)."""
    fig = go.Figure()
    fig.add_scatter(x=[], y=[], name="sum over tasks", mode="lines", line=dict(width=3))
    for t in tasks:
        fig.add_scatter(x=[], y=[], name=t, mode="lines", line=dict(width=1))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="entropy (nats)", height=360)
    extend_entropy_curve(fig, list(history))
    return fig


def extend_entropy_curve(fig: go.Figure, entries: list[dict]) -> None:
    """Append steps to :func:`entropy_curve`'s traces (the sum first, then one per task, in its order)."""
    if not entries:
        return
    steps = [e["step"] for e in entries]
    for i, trace in enumerate(fig.data):
        values = [e["entropy"] if i == 0 else e["per_task"][trace.name] for e in entries]
        trace.x = list(trace.x or ()) + steps
        trace.y = list(trace.y or ()) + values


# ------------------------------------------------------------------------------------------ landscapes
_DASH = ["solid", "dash", "dot", "dashdot"]


def _tasks_of(paths: dict) -> list[str]:
    return list(next(iter(paths.values())).points[0]["accuracy"])


def interpolation_markers(paths: dict, t: float, metric: str = "accuracy", live: dict | None = None) -> list[dict]:
    """Per path, the marker at ``t``: ``{"x", "y", "text"}`` over the tasks (a live point where ``live`` has one)."""
    tasks = _tasks_of(paths)
    out = []
    for label, p in paths.items():
        point = (live or {}).get(label) or p.at(t)
        x = t if label in (live or {}) else p.ts[min(range(len(p.ts)), key=lambda i: abs(p.ts[i] - t))]
        out.append({"x": [x] * len(tasks), "y": [point[metric][k] for k in tasks],
                    "text": [f"{label} t={x:.2f} {k}: {point[metric][k]:.3f}" for k in tasks]})
    return out


def interpolation_curves(paths: dict, t: float | None = 0.5, metric: str = "accuracy",
                         title: str | None = None) -> go.Figure:
    """``metric`` of each task along each path (colour = task, dash = path), [0, 1] shaded, and one marker trace
    per path at ``t`` (the last traces: :func:`interpolation_markers` moves them)."""
    tasks = _tasks_of(paths)
    fig = go.Figure()
    for j, (label, p) in enumerate(paths.items()):
        for i, task in enumerate(tasks):
            fig.add_scatter(x=p.ts, y=p.values(metric, task), mode="lines", name=f"{task} · {label}",
                            line=dict(color=_COLORS[i % len(_COLORS)], dash=_DASH[j % len(_DASH)], width=2))
    for j, m in enumerate(interpolation_markers(paths, 0.5 if t is None else t, metric)):
        fig.add_scatter(x=m["x"], y=m["y"], text=m["text"], hoverinfo="text", mode="markers",
                        name=f"t · {list(paths)[j]}", visible=t is not None,
                        marker=dict(size=13, color=[_COLORS[i % len(_COLORS)] for i in range(len(tasks))],
                                    symbol=["circle", "diamond", "square", "cross"][j % 4],
                                    line=dict(color="black", width=1.5)))
    fig.add_vrect(x0=0, x1=1, fillcolor="grey", opacity=0.08, line_width=0)
    fig.update_layout(title=title or f"{metric} along (1−t)·θ_A + t·θ_B", xaxis_title="t", yaxis_title=metric,
                      height=400)
    return fig


def path_curves(paths: dict, metric: str = "loss", title: str | None = None) -> go.Figure:
    """The mean-over-tasks ``metric`` along several paths (``{label: Path}``), with each one's barrier in the legend."""
    fig = go.Figure()
    for i, (label, p) in enumerate(paths.items()):
        fig.add_scatter(x=p.ts, y=p.values(metric), mode="lines+markers", line=dict(color=_COLORS[i % len(_COLORS)]),
                        name=f"{label} (barrier {p.barrier(metric):.3f})")
    fig.add_vrect(x0=0, x1=1, fillcolor="grey", opacity=0.08, line_width=0)
    fig.update_layout(title=title or f"mean {metric} along the path", xaxis_title="t",
                      yaxis_title=f"mean {metric}", height=380)
    return fig


def plane_contours(grid, metric: str = "loss", points: dict | None = None, title: str | None = None,
                   clip: float | None = None) -> go.Figure:
    """Contours of ``grid.loss`` (log10, clipped at ``clip``, default 5× the smallest loss) or ``grid.accuracy``,
    the plane's anchors as stars and extra ``points`` ``{label: (x, y, off-plane distance)}`` as crosses."""
    import numpy as np

    if metric == "loss":
        top = clip if clip is not None else 5 * float(grid.loss.min())
        z, bar = np.log10(np.clip(grid.loss, None, top)), "log10 loss (clipped)"
        scale = "Viridis"
    else:
        z, bar, scale = grid.accuracy, "accuracy", "RdBu"
    fig = go.Figure(go.Contour(x=grid.xs, y=grid.ys, z=z.tolist(), colorscale=scale, ncontours=18,
                               colorbar=dict(title=bar), contours=dict(showlabels=True)))
    anchors = grid.anchors
    fig.add_scatter(x=[p[0] for p in anchors.values()], y=[p[1] for p in anchors.values()], text=list(anchors),
                    mode="markers+text", textposition="top center", name="models",
                    marker=dict(symbol="star", size=16, color="white", line=dict(color="black", width=1.5)))
    if points:
        fig.add_scatter(x=[p[0] for p in points.values()], y=[p[1] for p in points.values()],
                        text=list(points), mode="markers+text", textposition="bottom center", name="merges",
                        customdata=[p[2] if len(p) > 2 else 0.0 for p in points.values()],
                        hovertemplate="%{text}<br>(%{x:.2f}, %{y:.2f})<br>off the plane: %{customdata:.2f}",
                        marker=dict(symbol="x", size=12, color="red", line=dict(color="black", width=1)))
    fig.update_layout(title=title or f"{metric} on the plane", xaxis_title="x", yaxis_title="y", height=480,
                      width=560, yaxis_scaleanchor="x")
    return fig


def simplex_scores(history: list[dict], labels: list[str], current: dict | None = None,
                   title: str = "accuracy of Σ wᵢθᵢ on the simplex") -> go.Figure:
    """Ternary plot of evaluated weightings ``{"weights": [w1, w2, w3], "mean_accuracy"}`` coloured by mean
    accuracy; ``current`` (one such dict) as a large marker."""
    fig = go.Figure()
    fig.add_scatterternary(a=[h["weights"][0] for h in history], b=[h["weights"][1] for h in history],
                           c=[h["weights"][2] for h in history], mode="markers", name="evaluated",
                           text=[f"{h['mean_accuracy']:.3f}" for h in history],
                           marker=dict(size=11, color=[h["mean_accuracy"] for h in history], colorscale="Viridis",
                                       showscale=True, colorbar=dict(title="mean acc."), cmin=0, cmax=1))
    cur = [current] if current else []
    fig.add_scatterternary(a=[h["weights"][0] for h in cur], b=[h["weights"][1] for h in cur],
                           c=[h["weights"][2] for h in cur], mode="markers", name="current",
                           text=[f"{h['mean_accuracy']:.3f}" for h in cur],
                           marker=dict(size=20, symbol="star", color="red", line=dict(color="black", width=1)))
    fig.update_layout(title=title, height=440, ternary=dict(aaxis_title=labels[0], baxis_title=labels[1],
                                                            caxis_title=labels[2]))
    return fig


def gold_logprob_bars(rows: list[dict], entity: str, methods: list[str]) -> go.Figure:
    """Per method, the log-probability of the gold candidate on each of ``entity``'s probes (higher is better);
    ``rows`` are :func:`fusionkit.distill.runs.probe_rows`."""
    sub = [r for r in rows if r["entity"] == entity]
    fig = go.Figure([go.Bar(name=m, x=[r["probe_type"] for r in sub], y=[r.get(f"{m}_logprob") for r in sub])
                     for m in methods])
    return fig.update_layout(barmode="group", yaxis_title="gold log-prob", height=340,
                             title=f"{entity}: gold log-prob per method")


def cost_accuracy(rows: dict[str, dict], title: str = "what each fusion costs and what it keeps") -> go.Figure:
    """Mean test accuracy against cost in seconds (log axis), one marker per system: ``rows[label] = {"test mean",
    "seconds", "data"}`` (the data it needed, shown on hover)."""
    fig = go.Figure()
    for label, r in rows.items():
        fig.add_scatter(x=[max(r["seconds"], 0.01)], y=[r["test mean"]], mode="markers+text", name=label,
                        text=[label], textposition="top center", hovertext=[f"{label}: {r['data']}"],
                        marker=dict(size=13))
    return fig.update_layout(title=title, xaxis=dict(type="log", title="seconds (merge, or training + teacher)"),
                             yaxis_title="mean test accuracy", height=420, showlegend=False)


def alignment_grid(result: dict, names: tuple[str, str] = ("a", "b"),
                   title: str = "token alignment: edit-distance cost and the DTW path") -> go.Figure:
    """The cost of every token pair of two tokenizations (:func:`fusionkit.distill.token_alignment.align`) as a
    heat-map, tokenizer a down, tokenizer b across, with the DTW path over it."""
    from ..distill.token_alignment import token_cost

    sa, sb = result["surfaces_a"], result["surfaces_b"]
    # position-prefixed labels: a repeated token ("the" twice) still gets its own row or column
    ya = [f"{i}:{s!r}" for i, s in enumerate(sa)]
    xb = [f"{j}:{s!r}" for j, s in enumerate(sb)]
    fig = go.Figure(go.Heatmap(z=[[token_cost(x, y) for y in sb] for x in sa], x=xb, y=ya, colorscale="Blues",
                               reversescale=True, zmin=0, zmax=1, colorbar=dict(title="cost")))
    fig.add_scatter(x=[xb[j] for _, j in result["path"]], y=[ya[i] for i, _ in result["path"]], mode="lines+markers",
                    name="DTW path", line=dict(color="crimson", width=3))
    return fig.update_layout(title=title, xaxis_title=names[1], yaxis_title=names[0], yaxis_autorange="reversed",
                             height=max(320, 24 * len(sa) + 140), showlegend=False)
