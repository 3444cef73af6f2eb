"""ipywidgets explorers built on :mod:`fusionkit.viz.plots`.

Conventions (``shared/design/notebooks.md``): build one ``FigureWidget``, update its traces inside
``batch_update()`` from ``observe(..., names="value")``, and show callback errors in an ``Output`` widget
(JupyterLab swallows them otherwise). Each explorer returns its controls and figure so tests can set a
value and check that the figure changed, without a browser.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import ipywidgets as W
import plotly.graph_objects as go

from ..core.errors import FusionkitError
from . import plots


@dataclass
class Explorer:
    """An explorer's parts: the box to display, its controls by name, its live figure and error output."""

    box: W.Widget
    controls: dict
    figure: go.FigureWidget
    errors: W.Output

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)


def task_explorer(tasks: dict) -> Explorer:
    """Pick a task and a split: the label-balance bars and a few examples update."""
    names = list(tasks)
    task_menu = W.Dropdown(options=names, value=names[0], description="task")
    split_menu = W.ToggleButtons(options=["train", "validation", "test"], value="train", description="split")
    fig = go.FigureWidget(plots.label_balance(tasks[names[0]]))
    examples = W.HTML()
    errors = W.Output()

    def show_examples(task, split):
        rows = task.data[split].select(range(min(4, len(task.data[split]))))
        items = "".join(f"<li><b>{task.label_names[r['label']]}</b>: {r['text'][:160]}</li>" for r in rows)
        examples.value = f"<ul>{items}</ul>"

    def update(_=None):
        with errors:
            task, split = tasks[task_menu.value], split_menu.value
            new = plots.label_balance(task, split)
            with fig.batch_update():
                fig.data[0].x = new.data[0].x
                fig.data[0].y = new.data[0].y
                fig.layout.title = new.layout.title
            show_examples(task, split)

    task_menu.observe(update, names="value")
    split_menu.observe(update, names="value")
    update()
    box = W.VBox([W.HBox([task_menu, split_menu]), fig, examples, errors])
    return Explorer(box, {"task": task_menu, "split": split_menu}, fig, errors)


def zoo_metric(zoo) -> str:
    """The metric a zoo's tasks are scored by (accuracy; a log-likelihood for the causal zoo's text domains)."""
    return next(iter(zoo.tasks.values())).metric


def chance_levels(zoo, split: str) -> dict[str, float] | None:
    """Each task's chance level, or None where a task has none (text is scored by likelihood, not labels)."""
    levels = {t: task.chance(split) for t, task in zoo.tasks.items()}
    return None if any(v is None for v in levels.values()) else {t: round(v, 3) for t, v in levels.items()}


def merge_explorer(zoo, method: str, evaluator, sliders: dict, split: str = "validation", **fixed) -> Explorer:
    """Sliders for a merge method's options -> live per-task accuracy bars of the merged model.

    ``sliders`` maps option name -> (min, max, step, value). Each change merges and scores the zoo's tasks,
    so the sliders use ``continuous_update=False``.
    """
    from ..merging.zoo_merge import merge_zoo, score_merged

    controls = {k: W.FloatSlider(min=lo, max=hi, step=st, value=v, description=k, continuous_update=False)
                for k, (lo, hi, st, v) in sliders.items()}
    errors = W.Output()
    tasks = list(zoo.tasks)
    metric = zoo_metric(zoo)
    fig = go.FigureWidget(plots.method_bars({method: {t: 0.0 for t in tasks}}, chance_levels(zoo, split),
                                            title=f"{method}: {split} {plots.metric_label(metric)} per task",
                                            metric=metric))
    status = W.HTML()

    def update(_=None):
        with errors:
            opts = {**fixed, **{k: c.value for k, c in controls.items()}}
            scores = score_merged(merge_zoo(method, zoo, **opts), zoo, evaluator, splits=(split,))
            with fig.batch_update():
                fig.data[0].y = [scores[t][split] for t in tasks]
            status.value = f"{method} {opts}: mean {sum(s[split] for s in scores.values()) / len(scores):.3f}"

    for c in controls.values():
        c.observe(update, names="value")
    update()
    return Explorer(W.VBox([W.HBox(list(controls.values())), status, fig, errors]), controls, fig, errors)


class LiveSearch:
    """A live dev-score plot for searches: ``dfwe(..., callback=live.track("CMA"))`` adds a search and appends
    every evaluation as it is scored. ``live.figure`` is the ``FigureWidget`` to display."""

    def __init__(self, title: str = "dev score per evaluation (live)"):
        self.figure = go.FigureWidget(plots.search_trace({}, title))
        self.labels: list[str] = []
        self.errors = W.Output()  # a plotting error must not end a long search: it lands here
        self.box = W.VBox([self.figure, self.errors])

    def track(self, label: str):
        i = len(self.labels)
        self.labels.append(label)
        with self.figure.batch_update():
            plots.add_search_trace(self.figure, label, i)

        def callback(entry: dict) -> None:
            with caught(self.errors), self.figure.batch_update():
                plots.extend_search_trace(self.figure, i, [entry])
        return callback


class LiveCurve:
    """A live figure that grows with each callback entry: ``run(..., callback=live.update)``. ``figure`` is a
    plots.* figure built empty, ``extend(figure, entries)`` its matching appender; a plotting error lands in
    ``errors`` instead of ending the run."""

    def __init__(self, figure: go.Figure, extend):
        self.figure = go.FigureWidget(figure)
        self._extend = extend
        self.errors = W.Output()
        self.box = W.VBox([self.figure, self.errors])

    def update(self, entry: dict) -> None:
        with caught(self.errors), self.figure.batch_update():
            self._extend(self.figure, [entry])


class LiveEvolution(LiveCurve):
    """A live fitness-per-generation plot: ``evolve(..., callback=live.update)``."""

    def __init__(self, title: str = "Evolver: dev score per generation (live)"):
        super().__init__(plots.evolution_curve([], title), plots.extend_evolution_curve)


class KLDashboard(LiveCurve):
    """A live KL curve for context distillation: ``distill.run(..., callback=dash.update)`` appends each logged
    step (``{"step", "kl", ...}``, see :func:`fusionkit.viz.plots.kl_curve`). ``dash.figure`` is the ``FigureWidget``."""

    def __init__(self, title: str = "context distillation: KL per step (live)"):
        super().__init__(plots.kl_curve([], title), plots.extend_kl_curve)


class LiveEntropy(LiveCurve):
    """A live entropy curve for AdaMerging: ``adamerge(zoo, callback=LiveEntropy(tasks).update)``."""

    def __init__(self, tasks: list[str], title: str = "AdaMerging: dev entropy per step (live)"):
        super().__init__(plots.entropy_curve(list(tasks), title=title), plots.extend_entropy_curve)


# ------------------------------------------------------------------------------------------ landscapes
@contextmanager
def caught(errors: W.Output):
    """Run a callback body so that its error lands in ``errors``: a kernel's Output shows the traceback itself;
    elsewhere (tests, scripts) the error is appended as a stderr line instead of escaping the callback."""
    try:
        with errors:
            yield
    except Exception as e:  # noqa: BLE001 - a widget callback must not die silently, nor kill the caller
        errors.append_stderr(f"{type(e).__name__}: {e}\n")


def interpolation_slider(paths: dict, metric: str = "accuracy", t: float = 0.5, live: dict | None = None,
                         step: float = 0.05) -> Explorer:
    """A t slider over precomputed paths (``{label: landscape.Path}``): the markers move along the curves and the
    status line shows each task's score at t.

    ``live`` maps a path label to ``f(t) -> point`` (e.g. ``lambda t: scorer(lerp(a, b, t, names))``): that path's
    point is then evaluated at exactly t on every move (one forward per task), so the slider only fires on
    release; without it the nearest precomputed point is shown and the slider moves continuously.
    """
    p0 = next(iter(paths.values()))
    slider = W.FloatSlider(min=min(p0.ts), max=max(p0.ts), step=step, value=t, description="t",
                           continuous_update=live is None, readout_format=".2f")
    fig = go.FigureWidget(plots.interpolation_curves(paths, t, metric))
    first = len(fig.data) - len(paths)  # the marker traces come last
    status, errors = W.HTML(), W.Output()

    def update(_=None):
        with caught(errors):
            now = slider.value
            points = {label: f(now) for label, f in (live or {}).items()}
            markers = plots.interpolation_markers(paths, now, metric, points)
            with fig.batch_update():
                for i, m in enumerate(markers):
                    fig.data[first + i].x, fig.data[first + i].y, fig.data[first + i].text = m["x"], m["y"], m["text"]
            rows = []
            for label, p in paths.items():
                point = points.get(label) or p.at(now)
                scores = ", ".join(f"{k} {v:.3f}" for k, v in point[metric].items())
                rows.append(f"<b>{label}</b>{' (live)' if label in points else ''}: {scores}")
            status.value = f"t = {now:.2f} · " + " | ".join(rows)

    slider.observe(update, names="value")
    update()
    return Explorer(W.VBox([slider, status, fig, errors]), {"t": slider}, fig, errors)


def simplex_picker(states: dict, scorer, weights=(1 / 3, 1 / 3, 1 / 3), history: list[dict] | None = None) -> Explorer:
    """Three weight sliders for three models -> the accuracy of their mix Σ wᵢθᵢ (weights normalised), drawn on a
    ternary plot with every weighting evaluated so far. ``scorer`` is a :class:`~fusionkit.models.scorer.Scorer`
    (each task with its head); ``history`` seeds the plot with precomputed points
    (:func:`~fusionkit.merging.landscape.simplex_scores`)."""
    from ..merging.landscape import float_names, mix

    labels, models = list(states), list(states.values())
    if len(models) != 3:
        raise FusionkitError(f"the simplex picker takes 3 models, got {len(models)}; fix: pass three states")
    names = float_names(models[0])
    controls = {lab: W.FloatSlider(min=0, max=1, step=0.05, value=w, description=lab, continuous_update=False)
                for lab, w in zip(labels, weights)}
    seen = list(history or [])
    fig = go.FigureWidget(plots.simplex_scores(seen, labels))
    status, errors = W.HTML(), W.Output()

    def update(_=None):
        with caught(errors):
            w = [controls[lab].value for lab in labels]
            if sum(w) <= 0:
                status.value = "all weights are zero: move one slider up"
                return
            w = [x / sum(w) for x in w]
            point = {**scorer.losses_and_scores(mix(models, w, names)), "weights": w}
            seen.append(point)
            new = plots.simplex_scores(seen, labels, point)
            with fig.batch_update():
                for old, fresh in zip(fig.data, new.data):
                    old.a, old.b, old.c, old.text = fresh.a, fresh.b, fresh.c, fresh.text
                fig.data[0].marker.color = new.data[0].marker.color
            scores = ", ".join(f"{k} {v:.3f}" for k, v in point["accuracy"].items())
            status.value = (f"w = ({', '.join(f'{x:.2f}' for x in w)}) · {scores} · "
                            f"mean {point['mean_accuracy']:.3f}")

    for c in controls.values():
        c.observe(update, names="value")
    update()
    return Explorer(W.VBox([W.HBox(list(controls.values())), status, fig, errors]), controls, fig, errors)


def _option_widget(name: str, option) -> W.Widget:
    """A control for one merge option, chosen by the type of its default."""
    d = option.default
    if isinstance(d, bool):
        return W.Checkbox(value=d, description=name, indent=False)
    if isinstance(d, int):
        return W.IntText(value=d, description=name, continuous_update=False)
    if isinstance(d, float):
        return W.FloatText(value=d, description=name, step=0.05, continuous_update=False)
    return W.Text(value=str(d), description=name, continuous_update=False)


def method_comparer(zoo, evaluator, experts: list[str] | None = None, split: str = "validation",
                    method: str | None = None) -> Explorer:
    """A menu of every registered merge method that fits the chosen experts (:mod:`fusionkit.merging.registry`) and
    that method's options -> per-task bars of the merged model; each method keeps its latest bars, so switching
    methods builds a comparison. ``controls["method"]`` is the menu, ``controls[option]`` the current options."""
    from ..merging.registry import METHODS
    from ..merging.zoo_merge import merge_zoo, score_merged

    n = len(experts) if experts else len(zoo.experts)
    names = [m for m, spec in METHODS.items() if spec.n_experts in (None, n)]
    menu = W.Dropdown(options=names, value=method or names[0], description="method")
    tasks = list(zoo.tasks)
    metric = zoo_metric(zoo)
    fig = go.FigureWidget(plots.method_bars({m: {t: 0.0 for t in tasks} for m in names}, chance_levels(zoo, split),
                                            title=f"{split} {plots.metric_label(metric)} per task", metric=metric))
    with fig.batch_update():
        for trace in fig.data[:len(names)]:
            trace.visible = False  # a method's bars appear once it has been merged
    controls: dict = {"method": menu}
    options_box, status, errors = W.HBox(), W.HTML(), W.Output()

    def run(_=None):
        with caught(errors):
            m = menu.value
            opts = {k: c.value for k, c in controls.items() if k != "method"}
            status.value = f"merging {m} {opts} ..."
            merged = merge_zoo(m, zoo, experts, evaluator=evaluator, **opts)
            scores = score_merged(merged, zoo, evaluator, splits=(split,))
            with fig.batch_update():
                bars = fig.data[names.index(m)]
                bars.y = [scores[t][split] if t in scores else 0.0 for t in tasks]
                bars.visible = True
                bars.name = f"{m} {opts}" if opts else m
            mean = sum(s[split] for s in scores.values()) / len(scores)
            status.value = f"{m} {opts}: mean {split} {plots.metric_label(metric)} {mean:.3f}"

    def rebuild(_=None):
        with caught(errors):
            for k in [k for k in controls if k != "method"]:
                del controls[k]
            for k, option in METHODS[menu.value].options.items():
                controls[k] = _option_widget(k, option)
                controls[k].observe(run, names="value")
                controls[k].tooltip = option.help
            options_box.children = [c for k, c in controls.items() if k != "method"]
        run()

    menu.observe(rebuild, names="value")
    rebuild()
    return Explorer(W.VBox([menu, options_box, status, fig, errors]), controls, fig, errors)


def probe_explorer(report: dict) -> Explorer:
    """Pick an injected entity: each method's gold log-prob on its probes (a distillation ``report`` of
    :func:`fusionkit.distill.runs.run`)."""
    from ..distill.runs import METHODS, probe_rows

    rows = probe_rows(report)
    methods = [m for m in METHODS if any(f"{m}_logprob" in r for r in rows)]
    entities = list(dict.fromkeys(r["entity"] for r in rows))
    if not entities:
        raise FusionkitError("the report has no probe rows; fix: pass the report of fusionkit.distill.run")
    pick = W.Dropdown(options=entities, value=entities[0], description="entity")
    fig = go.FigureWidget(plots.gold_logprob_bars(rows, entities[0], methods))
    errors = W.Output()

    def redraw(change):
        with caught(errors):
            new = plots.gold_logprob_bars(rows, change["new"], methods)
            with fig.batch_update():
                for trace, fresh in zip(fig.data, new.data):
                    trace.x, trace.y = fresh.x, fresh.y
                fig.layout.title = new.layout.title

    pick.observe(redraw, names="value")
    return Explorer(W.VBox([pick, fig, errors]), {"entity": pick}, fig, errors)


def alignment_explorer(tok_a, tok_b, text: str, names: tuple[str, str] = ("a", "b")) -> Explorer:
    """Type a sentence: both tokenizations and their DTW alignment redraw
    (:func:`fusionkit.distill.token_alignment.align`, :func:`fusionkit.viz.plots.alignment_grid`)."""
    from ..distill.token_alignment import align

    box = W.Text(value=text, description="text", continuous_update=False, layout=W.Layout(width="90%"))
    fig = go.FigureWidget(plots.alignment_grid(align(tok_a, tok_b, text), names))
    summary, errors = W.HTML(), W.Output()

    def update(_=None):
        with caught(errors):
            result = align(tok_a, tok_b, box.value)
            new = plots.alignment_grid(result, names)
            with fig.batch_update():
                for trace, fresh in zip(fig.data, new.data):
                    trace.x, trace.y = fresh.x, fresh.y
                    if fresh.type == "heatmap":
                        trace.z = fresh.z
                fig.layout.height = new.layout.height
            summary.value = (f"{names[0]}: {len(result['surfaces_a'])} tokens, {names[1]}: "
                             f"{len(result['surfaces_b'])}; {len(result['one_to_one'])} of {names[0]}'s tokens "
                             "align one-to-one")

    box.observe(update, names="value")
    update()
    return Explorer(W.VBox([box, summary, fig, errors]), {"text": box}, fig, errors)
