"""Task-specific merges (EMR-merging, TALL masks) and consensus merging: each method's masks, rescalers and
models by hand on small tensors, the compact file round trip, and the zoo path (one body per task, chosen on dev)."""
import math

import pytest
import torch

from fusionkit.core.errors import FusionkitError, MergeError
from fusionkit.merging.merge import merge
from fusionkit.merging.task_models import load_task_models, merge_task_specific
from fusionkit.merging.zoo_merge import choose_per_task, merge_zoo, score_merged
from fusionkit.models.zoo import Zoo

BASE = {"w": torch.tensor([0.5, 0.5, -1.0, 2.0])}
TAUS = [torch.tensor([1.0, -2.0, 3.0, 0.0]), torch.tensor([2.0, 1.0, -1.0, -1.0])]
EXPERTS = [{"w": BASE["w"] + t} for t in TAUS]


def test_emr_elects_masks_and_rescales_as_in_the_paper():
    """Στ = [3, −1, 2, −1]: signs [+, −, +, −]; the agreeing magnitudes' max gives τ_uni = [2, −2, 3, −1];
    M₁ = [1, 1, 1, 0], M₂ = [1, 0, 0, 1]; s₁ = Σ|τ₁| / Σ|M₁τ_uni| = 6/7, s₂ = 5/3."""
    got = merge_task_specific("emr", EXPERTS, BASE, labels=["a", "b"])
    assert got.shared["w"].tolist() == [2.0, -2.0, 3.0, -1.0]
    assert got.masks[0]["w"].tolist() == [True, True, True, False]
    assert got.masks[1]["w"].tolist() == [True, False, False, True]
    assert got.scales == pytest.approx([6 / 7, 5 / 3])
    expect_b = BASE["w"] + 5 / 3 * torch.tensor([2.0, 0.0, 0.0, -1.0])
    torch.testing.assert_close(got.state("b", BASE)["w"], expect_b)


def test_emr_rescaler_is_one_ratio_over_the_whole_model_not_per_tensor():
    """Split the same vector into two tensors: the masks split, the rescalers do not change."""
    split = lambda s: {"x": s["w"][:2], "y": s["w"][2:]}  # noqa: E731
    whole = merge_task_specific("emr", EXPERTS, BASE)
    parts = merge_task_specific("emr", [split(e) for e in EXPERTS], split(BASE))
    assert parts.scales == pytest.approx(whole.scales)
    torch.testing.assert_close(torch.cat([parts.state(1, split(BASE))["x"], parts.state(1, split(BASE))["y"]]),
                               whole.state(1, BASE)["w"])


def test_tall_masks_keep_entries_where_the_merged_vector_is_close_to_the_task():
    """τ₁ = [1, 0.1], τ₂ = [−1, 1], α = 1: τ_MTL = [0, 1.1]. λ = 0.4: task 1 keeps entry 0 (1 ≥ 0.4·1) but not
    entry 1 (0.1 < 0.4·1.0); task 2 keeps both (1 ≥ 0.4·1, 1 ≥ 0.4·0.1). No rescaler."""
    base = {"w": torch.zeros(2)}
    experts = [{"w": torch.tensor([1.0, 0.1])}, {"w": torch.tensor([-1.0, 1.0])}]
    got = merge_task_specific("tall_masks", experts, base, lam=0.4, alpha=1.0)
    torch.testing.assert_close(got.shared["w"], torch.tensor([0.0, 1.1]))
    assert got.masks[0]["w"].tolist() == [True, False] and got.masks[1]["w"].tolist() == [True, True]
    assert got.scales == [1.0, 1.0]
    torch.testing.assert_close(got.state(1, base)["w"], torch.tensor([0.0, 1.1]))
    assert merge_task_specific("tall_masks", experts, base, lam=0.0).density(0) == 1.0  # λ = 0 keeps everything


def test_consensus_drops_entries_fewer_than_k_tasks_keep():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(50, generator=g)}
    experts = [{"w": base["w"] + torch.randn(50, generator=g)} for _ in range(3)]
    ta = merge("task_arithmetic", experts, base=base, lam=0.4)["w"]
    torch.testing.assert_close(merge("consensus", experts, base=base, k=0, alpha=0.4)["w"], ta)  # k = 0: TA
    torch.testing.assert_close(merge("consensus", experts, base=base, k=4)["w"], base["w"])  # no entry has 4 votes
    tall = merge_task_specific("tall_masks", experts, base, lam=0.4, alpha=0.4)
    votes = sum(m["w"].int() for m in tall.masks)
    two = merge("consensus", experts, base=base, k=2, lam=0.4, alpha=0.4)["w"]
    torch.testing.assert_close(two, torch.where(votes >= 2, ta, base["w"]))
    assert 0 < int((votes >= 2).sum()) < 50  # the case is not degenerate


def test_compact_file_round_trips_and_costs_a_bit_per_parameter_per_task(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = {"a.weight": torch.randn(7, 3, generator=g), "pos": torch.arange(5)}
    experts = [{"a.weight": base["a.weight"] + torch.randn(7, 3, generator=g), "pos": torch.arange(5)}
               for _ in range(3)]
    got = merge_task_specific("emr", experts, base, labels=["x", "y", "z"])
    back = load_task_models(got.save(tmp_path / "emr.safetensors"))
    assert back.labels == ["x", "y", "z"] and back.scales == got.scales and back.method == "emr"
    for t in back.labels:
        for n in ("a.weight", "pos"):
            torch.testing.assert_close(back.state(t, base)[n], got.state(t, base)[n])
    cost = got.storage()
    assert cost["shared_bytes"] == 21 * 4 and cost["per_task_bytes"] == math.ceil(21 / 8) + 8
    assert cost["total_bytes"] == 84 + 3 * cost["per_task_bytes"] and cost["experts_bytes"] == 3 * 84


def test_task_level_methods_refuse_single_model_paths_and_missing_base():
    with pytest.raises(MergeError, match="one model per task.*merge_task_specific"):
        merge("emr", EXPERTS, base=BASE)
    with pytest.raises(MergeError, match="needs the base"):
        merge_task_specific("tall_masks", EXPERTS, None)
    with pytest.raises(MergeError, match="lam=-1.*>= 0"):
        merge_task_specific("tall_masks", EXPERTS, BASE, lam=-1)


def test_a_zoo_merge_gives_each_task_its_own_body_and_scores_it(tiny_zoo):
    ev = tiny_zoo.evaluator()
    merged = merge_zoo("emr", tiny_zoo)
    assert set(merged.bodies) == {"two", "three"} and merged.task_models.labels == ["two", "three"]
    name = next(n for n in merged.task_models.shared if n in merged.bodies["two"])
    assert not torch.equal(merged.bodies["two"][name], merged.bodies["three"][name])  # different masks
    scores = score_merged(merged, tiny_zoo, ev, splits=("validation",))
    for t, task in tiny_zoo.tasks.items():  # scored with the task's own body, not the shared one
        assert scores[t]["validation"] == round(ev.score(task, "validation", params=merged.bodies[t],
                                                         head=merged.heads[t]), 4)
    from fusionkit.reproduce.merging import merged_correct  # the paired-interval path scores the same bodies

    per_example = merged_correct(tiny_zoo, ev, merged, "validation")
    assert {t: round(float(v.mean()), 4) for t, v in per_example.items()} == {
        t: s["validation"] for t, s in scores.items()}
    chosen = choose_per_task(tiny_zoo, "tall_masks", "lam", [0.0, 1.0, 5.0], ev)
    for t in tiny_zoo.tasks:
        by_value = [row["scores"][t] for row in chosen.trace]
        assert by_value[[0.0, 1.0, 5.0].index(chosen.options["lam"][t])] == max(by_value)
        assert score_merged(chosen, tiny_zoo, ev, splits=("validation",))[t]["validation"] == max(by_value)
    with pytest.raises(MergeError, match="nothing to choose per task"):
        choose_per_task(tiny_zoo, "ties", "density", [0.2], ev)


def test_task_level_merges_need_one_expert_per_task_and_cannot_seed_a_student(tiny_zoo):
    from fusionkit.distill.ensemble import start_of
    from fusionkit.models.training import finetune

    again = finetune(tiny_zoo.base, tiny_zoo.tasks["two"], tiny_zoo.profile, seed=1, name="two-b", quiet=True)
    zoo = Zoo("twice", tiny_zoo.profile, tiny_zoo.tasks, [*tiny_zoo.experts, again], tiny_zoo.train_tasks | {
        "two-b": tiny_zoo.tasks["two"]}, base=tiny_zoo.base)
    with pytest.raises(MergeError, match=r"one model per task.*\['two'\].*one expert per task"):
        merge_zoo("emr", zoo)
    with pytest.raises(FusionkitError, match="its own body.*single-model merge"):
        start_of(tiny_zoo, merge_zoo("emr", tiny_zoo))


def test_save_merged_writes_one_folder_per_task_and_the_compact_file(tiny_zoo, tmp_path):
    import json

    from fusionkit.merging.export import save_merged
    from fusionkit.merging.task_models import FILE
    from fusionkit.models.heads import base_state

    merged = merge_zoo("emr", tiny_zoo)
    out = save_merged(merged, tmp_path / "emr")
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["storage"] == merged.task_models.storage() and not (out / "mergekit.yml").exists()
    parts = load_task_models(out / FILE)
    theta0 = base_state(tiny_zoo.base, tiny_zoo.experts[0].recipe["labels"], 0)
    for t in tiny_zoo.tasks:
        from safetensors.torch import load_file

        saved = load_file(out / t / "model.safetensors")
        rebuilt = parts.state(t, theta0)
        for n, v in merged.bodies[t].items():
            torch.testing.assert_close(saved[n], v)
            torch.testing.assert_close(rebuilt[n], v)


def test_cli_per_task_chooses_on_validation_and_names_bad_specs(tiny_zoo, capsys, monkeypatch):
    """`fusionkit merge tall_masks --per-task lam=...` as a user runs it (the zoo swapped for the tiny one): λ chosen
    per task on validation, the best value for each task; a wrong option or value is one line naming the fix."""
    import json

    import fusionkit.models.zoo as zoo_module
    from fusionkit.cli import main

    monkeypatch.setattr(zoo_module, "build_zoo", lambda *a, **k: tiny_zoo)
    assert main(["merge", "tall_masks", "--per-task", "lam=0.0,1.0,5.0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    chosen, trace = out["options"]["lam"], out["trace"]
    assert set(chosen) == set(tiny_zoo.tasks) and [row["lam"] for row in trace] == [0.0, 1.0, 5.0]
    for t, v in chosen.items():
        by_value = [row["scores"][t] for row in trace]
        assert by_value[[0.0, 1.0, 5.0].index(v)] == max(by_value)
        assert out["results"][t]["validation"] == max(by_value)
    for spec, why in (("bogus=0.1", "no option 'bogus'"), ("lam=big", "float values"), ("lam=", "no values")):
        assert main(["merge", "tall_masks", "--per-task", spec]) == 2
        assert why in capsys.readouterr().err
    assert main(["merge", "tall_masks", "--per-task", "lam=0.2", "--lam", "0.4"]) == 2
    assert "drop --lam" in capsys.readouterr().err
