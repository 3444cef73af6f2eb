"""Explorers without a browser: set a control's value and check the live figure changed."""
import pytest

from conftest import toy_frame
from fusionkit import plots
from fusionkit.data.tasks import task_from
from fusionkit.viz.widgets import task_explorer


def test_task_explorer_updates_its_figure():
    three = toy_frame(90)
    three.loc[::3, "label"] = "neutral"
    tasks = {"toy": task_from(toy_frame(100), name="toy"), "three": task_from(three, name="three")}
    ex = task_explorer(tasks)
    assert list(ex.figure.data[0].x) == ["negative", "positive"]
    ex.controls["task"].value = "three"
    assert list(ex.figure.data[0].x) == ["negative", "neutral", "positive"]
    before = list(ex.figure.data[0].y)
    ex.controls["split"].value = "test"
    assert list(ex.figure.data[0].y) != before and sum(ex.figure.data[0].y) == 9
    assert ex.errors.outputs == ()  # no callback error was swallowed


def test_heatmap_marks_gain_over_chance():
    zoo = {"zoo": "z", "profile": "smoke", "tasks": {"a": {"chance": 0.5}, "b": {"chance": 0.25}},
           "experts": [{"name": "ea", "scores": {"a": {"test": 0.9}, "b": {"test": 0.25}}},
                       {"name": "eb", "scores": {"a": {"test": 0.5}, "b": {"test": 0.75}}}]}
    fig = plots.expert_task_heatmap(zoo, relative=True)
    assert [list(r) for r in fig.data[0].z] == [[0.4, 0.0], [0.0, 0.5]]
    assert [list(r) for r in plots.expert_task_heatmap(zoo).data[0].z] == [[0.9, 0.25], [0.5, 0.75]]


def test_live_search_and_evolution_plots_grow_with_each_callback():
    from fusionkit.viz.widgets import LiveEvolution, LiveSearch

    live = LiveSearch()
    a, b = live.track("NGOpt"), live.track("CMA")
    for i, dev in enumerate([0.5, 0.7, 0.6]):
        a({"eval": i, "dev": dev})
    b({"eval": 0, "dev": 0.4})
    assert list(live.figure.data[0].y) == [0.5, 0.7, 0.6] and list(live.figure.data[1].y) == [0.5, 0.7, 0.7]
    assert list(live.figure.data[2].y) == [0.4] and len(live.figure.data) == 4
    evo = LiveEvolution()
    evo.update({"generation": 0, "dev": 0.5, "mean": 0.5, "acceptance": None})
    evo.update({"generation": 1, "dev": 0.6, "mean": 0.55, "acceptance": 0.4})
    assert list(evo.figure.data[0].y) == [0.5, 0.6] and list(evo.figure.data[2].y) == [0, 0.4]


def test_kl_dashboard_adds_points_only_for_logged_keys():
    from fusionkit.viz.widgets import KLDashboard

    dash = KLDashboard()
    dash.update({"step": 0, "kl": 1.5, "explicit_acc": 0.2})
    dash.update({"step": 1, "kl": 1.0})
    dash.update({"step": 2, "kl": 0.5, "heldout_kl": 0.9, "explicit_acc": 0.6, "implicit_acc": 0.4})
    kl, held, exp, imp = dash.figure.data
    assert list(kl.x) == [0, 1, 2] and list(kl.y) == [1.5, 1.0, 0.5]
    assert list(held.x) == [2] and list(exp.y) == [0.2, 0.6] and list(imp.x) == [2]
    assert dash.errors.outputs == ()
    dash.update({"kl": 0.1})  # no step: the error is shown in the dashboard, the training loop goes on
    assert len(dash.errors.outputs) == 1 and "step" in dash.errors.outputs[0]["text"] and list(kl.y) == [1.5, 1.0, 0.5]


def test_live_search_shows_a_plotting_error_instead_of_ending_the_search():
    from fusionkit.viz.widgets import LiveSearch

    live = LiveSearch()
    cb = live.track("NGOpt")
    cb({"eval": 0})  # no "dev"
    cb({"eval": 1, "dev": 0.5})
    assert len(live.errors.outputs) == 1 and list(live.figure.data[1].y) == [0.5]


def _fake_path(method, shift):
    from fusionkit.merging.landscape import Path

    ts = [-0.5, 0.0, 0.5, 1.0, 1.5]
    points = [{"loss": {"a": 1 + t * t, "b": 2 - t}, "accuracy": {"a": 0.9 - 0.2 * t + shift, "b": 0.5 + 0.2 * t},
               "mean_loss": (3 + t * t - t) / 2, "mean_accuracy": 0.7 + shift / 2} for t in ts]
    return Path(method, ts, points, 0.0)


def test_interpolation_slider_moves_its_markers_and_shows_live_points():
    from fusionkit.viz.widgets import interpolation_slider

    paths = {"linear": _fake_path("linear", 0.0), "slerp": _fake_path("slerp", 0.05)}
    ex = interpolation_slider(paths, t=0.5)
    markers = ex.figure.data[-2:]
    assert list(markers[0].x) == [0.5, 0.5] and list(markers[0].y) == pytest.approx([0.8, 0.6])
    ex.controls["t"].value = 1.0
    assert list(markers[0].x) == [1.0, 1.0] and list(markers[1].y) == pytest.approx([0.75, 0.7])
    assert "t = 1.00" in ex.box.children[1].value and ex.errors.outputs == ()
    assert plots.interpolation_curves(paths, 1.0).data[-1].y == markers[1].y  # the static twin draws the same
    calls = []

    def live(t):
        calls.append(t)
        return {"loss": {"a": 0.0, "b": 0.0}, "accuracy": {"a": 0.123, "b": 0.456}}
    ex = interpolation_slider(paths, live={"linear": live})
    assert ex.controls["t"].continuous_update is False  # an evaluation per move: fire on release only
    ex.controls["t"].value = 0.25
    assert calls == [0.5, 0.25] and list(ex.figure.data[-2].x) == [0.25, 0.25]
    assert list(ex.figure.data[-2].y) == [0.123, 0.456] and "(live)" in ex.box.children[1].value


def test_simplex_picker_scores_the_mix_of_three_models(tiny_bert, toy_task):
    import torch

    from fusionkit.data.assets import load_base
    from fusionkit.models.evaluator import Evaluator
    from fusionkit.models.heads import split_head
    from fusionkit.models.scorer import Scorer
    from fusionkit.merging.landscape import mix
    from fusionkit.viz.widgets import simplex_picker

    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    body, head = split_head(model.state_dict(), ("classifier",))
    gen = torch.Generator().manual_seed(0)
    states = {f"m{i}": {k: v + i * 0.5 * torch.randn(v.shape, generator=gen) * v.std() if v.numel() > 1 else v
                        for k, v in body.items()} for i in range(3)}
    scorer = Scorer(Evaluator(model, tok, max_length=16), {"toy": toy_task}, {"toy": head}, measure="both",
                    dev_examples=24)
    ex = simplex_picker(states, scorer)
    assert len(ex.figure.data[0].a) == 1 and list(ex.figure.data[1].a) == pytest.approx([1 / 3])
    ex.controls["m0"].value = 1.0
    assert ex.errors.outputs == ()
    assert len(ex.figure.data[0].a) == 2 and ex.figure.data[1].a[0] == pytest.approx(1 / (1 + 2 / 3))
    w = [1.0, 1 / 3, 1 / 3]
    expected = scorer(mix(list(states.values()), w))["mean_accuracy"]
    assert f"mean {expected:.3f}" in ex.box.children[1].value
    for c in ex.controls.values():
        c.value = 0.0
    assert "all weights are zero" in ex.box.children[1].value and ex.errors.outputs == ()


def test_method_comparer_lists_registered_methods_and_rebuilds_options(tiny_bert):
    from fusionkit.models.evaluator import Evaluator
    from fusionkit.models.training import finetune
    from fusionkit.merging.zoo_merge import merge_zoo, score_merged
    from fusionkit.merging.registry import METHODS
    from fusionkit.core.profiles import get_profile
    from fusionkit.viz.widgets import method_comparer
    from fusionkit.models.zoo import Zoo

    two = task_from(toy_frame(120), name="two")
    df = toy_frame(120, seed=1)
    df.loc[::3, "label"] = "neutral"
    three = task_from(df, name="three")
    fast = dict(epochs=2, batch_size=16, lr=3e-3, max_length=16)
    experts = [finetune(tiny_bert, t, "smoke", quiet=True, **fast) for t in (two, three)]
    zoo = Zoo("tiny", get_profile("smoke").with_(max_length=16, stats_examples=16), {"two": two, "three": three},
              experts, train_tasks={"two": two, "three": three}, base=tiny_bert)
    model, tok = experts[0].load()
    ev = Evaluator(model, tok, max_length=16)
    ex = method_comparer(zoo, ev, method="task_arithmetic")
    assert list(ex.controls["method"].options) == [m for m in METHODS]  # two experts: SLERP fits too
    assert set(ex.controls) == {"method", "lam"} and ex.figure.data[list(METHODS).index("task_arithmetic")].visible
    ex.controls["lam"].value = 1.0
    expected = score_merged(merge_zoo("task_arithmetic", zoo, lam=1.0), zoo, ev, splits=("validation",))
    bars = ex.figure.data[list(METHODS).index("task_arithmetic")]
    assert list(bars.y) == [expected[t]["validation"] for t in zoo.tasks] and "lam" in bars.name
    ex.controls["method"].value = "ties"
    assert set(ex.controls) == {"method", "density", "lam"} and ex.figure.data[list(METHODS).index("ties")].visible
    assert bars.visible  # the earlier method's bars stay, for comparison
    ex.controls["density"].value = 1.0
    assert "'density': 1.0" in ex.figure.data[list(METHODS).index("ties")].name and ex.errors.outputs == ()
    ex.controls["density"].value = 7.0  # out of range: the merge refuses, the error lands in the Output
    assert len(ex.errors.outputs) == 1 and "density=7.0 must be in (0, 1]" in ex.errors.outputs[0]["text"]


def test_probe_explorer_switches_entities_and_shows_each_methods_gold_logprob():
    from fusionkit.viz.widgets import probe_explorer

    def rows(shift):
        return [{"uid": f"{e}-{t}", "ex_id": f"{e}-{t}", "entity": e, "probe_type": t, "correct": True,
                 "gold_logprob": -1.0 - i - shift} for i, (e, t) in enumerate([("Zorbl", "explicit"), ("Zorbl", "implicit"),
                                                                                ("Quix", "explicit"), ("Quix", "implicit")])]
    report = {"raw": {m: {"rows": rows(k)} for k, m in enumerate(["no_update", "finetune", "distill", "prepend"])}}
    ex = probe_explorer(report)
    assert [t.name for t in ex.figure.data] == ["no_update", "finetune", "distill", "prepend"]
    assert list(ex.figure.data[2].y) == [-3.0, -4.0]  # distill on Zorbl's two probes
    ex.controls["entity"].value = "Quix"
    assert list(ex.figure.data[2].y) == [-5.0, -6.0] and "Quix" in ex.figure.layout.title.text
    with pytest.raises(Exception, match="no probe rows"):
        probe_explorer({"raw": {"no_update": {"rows": []}}})
