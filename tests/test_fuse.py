"""Merging whole experts: the head policy, statistics, the written folder and the mergekit export."""
import json

import pytest
import torch

from conftest import toy_frame
from fusionkit.models.evaluator import Evaluator
from fusionkit.models.training import finetune
from fusionkit.merging.export import mergekit_config, save_merged, to_yaml
from fusionkit.merging.zoo_merge import ensemble_scores, merge_zoo, score_merged
from fusionkit.core.errors import MergeError
from fusionkit.core.profiles import get_profile
from fusionkit.data.tasks import task_from
from fusionkit.models.zoo import Zoo

FAST = dict(epochs=3, batch_size=16, lr=3e-3, max_length=16)


@pytest.fixture
def tiny_zoo(tiny_bert):
    """Two experts with different label spaces (2 and 3 labels) on one tiny base."""
    two = task_from(toy_frame(120), name="two")
    df = toy_frame(120, seed=1)
    df.loc[::3, "label"] = "neutral"
    three = task_from(df, name="three")
    profile = get_profile("smoke").with_(max_length=16, stats_examples=16)
    experts = [finetune(tiny_bert, t, "smoke", quiet=True, **FAST) for t in (two, three)]
    return Zoo("tiny", profile, {"two": two, "three": three}, experts,
               train_tasks={"two": two, "three": three}, base=tiny_bert)


@pytest.fixture
def shared_zoo(tiny_bert):
    two = task_from(toy_frame(120), name="two")
    profile = get_profile("smoke").with_(max_length=16, stats_examples=16)
    experts = [finetune(tiny_bert, two, "smoke", seed=s, name=f"two-s{s}", quiet=True, **FAST) for s in (0, 1)]
    return Zoo("shared", profile, {"two": two}, experts, train_tasks={e.name: two for e in experts}, base=tiny_bert)


def evaluator(zoo):
    model, tok = zoo.experts[0].load()
    return Evaluator(model, tok, max_length=16)


def test_different_tasks_merge_bodies_and_keep_heads(tiny_zoo):
    merged = merge_zoo("average", tiny_zoo)
    assert not merged.heads_merged and set(merged.heads) == {"two", "three"}
    assert merged.heads["three"]["classifier.weight"].shape[0] == 3
    assert not any(k.startswith("classifier") for k in merged.body)
    bodies = [e.body_and_head()[0] for e in tiny_zoo.experts]
    k = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(merged.body[k], (bodies[0][k] + bodies[1][k]) / 2)
    scores = score_merged(merged, tiny_zoo, evaluator(tiny_zoo))
    assert set(scores) == {"two", "three"} and all(0 <= s["test"] <= 1 for s in scores.values())


def test_shared_label_space_merges_heads_too(shared_zoo):
    merged = merge_zoo("ties", shared_zoo, density=0.5)
    assert merged.heads_merged and list(merged.heads) == ["two"]
    heads = [e.body_and_head()[1]["classifier.weight"] for e in shared_zoo.experts]
    assert not torch.equal(merged.heads["two"]["classifier.weight"], heads[0])


def test_regmean_measures_once_and_caches(tiny_zoo):
    from fusionkit.core.cache import cache_dir

    merge_zoo("regmean", tiny_zoo, alpha=0.9)
    files = sorted(p.name for e in tiny_zoo.experts for p in cache_dir("stats", e.id).iterdir())
    assert len(files) == 2 and all(f.startswith("gram-") for f in files)
    merge_zoo("regmean", tiny_zoo, alpha=0.5)  # reuses the cached Grams
    assert sorted(p.name for e in tiny_zoo.experts for p in cache_dir("stats", e.id).iterdir()) == files


def test_statistics_spelled_out_at_their_defaults_are_the_same_artefact(tiny_zoo):
    from fusionkit.core.cache import cache_dir
    from fusionkit.core.errors import MergeError
    from fusionkit.merging.statistics import expert_stats

    e = tiny_zoo.experts[0]
    task = tiny_zoo.train_tasks[e.name]
    expert_stats(e, "gram", task, examples=8, max_length=16)
    before = sorted(p.name for p in cache_dir("stats", e.id).iterdir())
    expert_stats(e, "gram", task, examples=8, max_length=16, seed=0, batch_size=32)  # the defaults, spelled out
    assert sorted(p.name for p in cache_dir("stats", e.id).iterdir()) == before
    expert_stats(e, "gram", task, examples=8, max_length=16, seed=1)  # another setting: another artefact
    assert len(list(cache_dir("stats", e.id).iterdir())) == len(before) + 1
    with pytest.raises(MergeError, match="no option"):
        expert_stats(e, "gram", task, exampels=8)


def test_saved_folders_load_in_plain_transformers_and_score_the_same(tiny_zoo, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = merge_zoo("task_arithmetic", tiny_zoo, lam=0.7)
    ev = evaluator(tiny_zoo)
    in_memory = score_merged(merged, tiny_zoo, ev)
    out = save_merged(merged, tmp_path / "merged")
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["method"] == "task_arithmetic" and recipe["options"]["lam"] == 0.7
    assert {i["name"] for i in recipe["inputs"]} == {"two", "three"} and all(len(i["sha256"]) == 64 for i in recipe["inputs"])
    for task in ("two", "three"):
        model = AutoModelForSequenceClassification.from_pretrained(out / task)
        tok = AutoTokenizer.from_pretrained(out / task)
        fresh = Evaluator(model, tok, max_length=16)
        task_ = tiny_zoo.tasks[task]
        assert round(fresh.score(task_, "test"), 4) == in_memory[task]["test"]
        torch.testing.assert_close(fresh.logits(task_, "test"),
                                   ev.logits(task_, "test", params=merged.body, head=merged.heads[task]))
    with pytest.raises(FileExistsError, match="already exists"):
        save_merged(merged, out)
    save_merged(merged, out, overwrite=True)


def test_mergekit_export():
    class E:
        def __init__(self, n):
            self.path, self.name = f"/m/{n}", n

    from fusionkit.merging.zoo_merge import Merged

    m = Merged("ties", {"density": 0.3, "lam": 1.0}, {}, {}, False, [E("a"), E("b")])
    cfg = mergekit_config(m, base_path="/m/base")
    assert cfg["merge_method"] == "ties" and cfg["base_model"] == "/m/base"
    assert cfg["models"][0]["parameters"] == {"weight": 1.0, "density": 0.3}
    text = to_yaml(cfg)
    assert "merge_method: ties" in text and "density: 0.3" in text and "- model: /m/a" in text
    assert mergekit_config(Merged("regmean", {}, {}, {}, False, [E("a"), E("b")])) is None
    dare = mergekit_config(Merged("dare", {"p": 0.7, "rescale": "inverse", "then": "ties", "lam": 1.0, "seed": 0},
                                  {}, {}, False, [E("a"), E("b")]), "/m/base")
    assert dare["merge_method"] == "dare_ties" and dare["models"][1]["parameters"]["density"] == 0.3


def test_the_ensemble_needs_one_label_space(tiny_zoo, shared_zoo):
    """RegMean's references: the logit ensemble where the experts share a label space; with different label spaces
    it would average task t's head over bodies that never trained with it, so it is refused, naming the fix."""
    scores = ensemble_scores(shared_zoo, evaluator(shared_zoo))
    assert set(scores) == {"two"} and 0 <= scores["two"]["test"] <= 1
    with pytest.raises(MergeError, match="share one label space.*multi-task"):
        ensemble_scores(tiny_zoo, evaluator(tiny_zoo))


def test_experts_of_different_bases_are_refused(tiny_zoo):
    other = tiny_zoo.experts[1]
    other.recipe = {**other.recipe, "base": "minilm"}
    with pytest.raises(MergeError, match="different bases"):
        merge_zoo("average", tiny_zoo)


def test_merge_explorer_slider_changes_the_bars(tiny_zoo):
    from fusionkit.viz.widgets import merge_explorer

    ev = evaluator(tiny_zoo)
    ex = merge_explorer(tiny_zoo, "task_arithmetic", ev, {"lam": (0.0, 2.0, 0.1, 0.0)})
    assert "'lam': 0.0" in ex.box.children[1].value
    ex.controls["lam"].value = 1.0
    assert ex.errors.outputs == ()
    assert "'lam': 1.0" in ex.box.children[1].value  # the callback ran with the new value
    expected = score_merged(merge_zoo("task_arithmetic", tiny_zoo, lam=1.0), tiny_zoo, ev, splits=("validation",))
    assert list(ex.figure.data[0].y) == [expected[t]["validation"] for t in tiny_zoo.tasks]


def test_sweep_rows(tiny_zoo):
    from fusionkit.merging.zoo_merge import sweep

    rows = sweep(tiny_zoo, "task_arithmetic", "lam", [0.0, 1.0], evaluator(tiny_zoo))
    assert [r["lam"] for r in rows] == [0.0, 1.0] and set(rows[0]["scores"]) == {"two", "three"}


def test_greedy_soup_only_keeps_experts_that_help_on_dev(shared_zoo):
    from fusionkit.merging.methods.soups import greedy_soup

    ev = evaluator(shared_zoo)
    merged, trace = greedy_soup(shared_zoo, ev)
    assert trace[0]["kept"] and len(trace) == 2
    devs = [t["dev"] for t in trace]
    if trace[1]["kept"]:
        assert devs[1] > devs[0] and merged.options["soup"] == [t["expert"] for t in trace]
    else:
        assert merged.options["soup"] == [trace[0]["expert"]]
    final = score_merged(merged, shared_zoo, ev, splits=("validation",))["two"]["validation"]
    assert final == max(t["dev"] for t in trace if t["kept"])  # best-so-far never gets worse


def test_experts_with_different_tokenizers_are_refused(tiny_zoo):
    (tiny_zoo.experts[1].path / "tokenizer.json").write_text('{"changed": true}')
    with pytest.raises(MergeError, match="different tokenizers"):
        merge_zoo("average", tiny_zoo)
