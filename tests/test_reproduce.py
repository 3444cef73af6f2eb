"""The reproduction table's rows: the interval, the verdict it allows, margins, seeds, and the dev criterion of the
distillation protocol - on scores built in the test, where the right verdict is known."""
import numpy as np
import pytest

from fusionkit.reproduce.distillation import SPEC_TOLERANCE, pick
from fusionkit.reproduce.table import compare, seed_mean, to_markdown

KW = dict(paper="p", setting="s")


def scores(p, n=400, seed=0):
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def test_a_clear_win_a_clear_loss_and_noise_get_their_verdicts():
    base = scores(0.5)
    better = np.maximum(base, scores(0.3, seed=1))  # every example right where base is, and more
    assert compare("A > B", "A", better, "B", base, **KW).verdict == "reproduces"
    assert compare("A > B", "A", base, "B", better, **KW).verdict == "does not"
    noisy = base.copy()
    noisy[:4] = 1 - noisy[:4]  # four examples flipped both ways: no measurable difference
    row = compare("A > B", "A", noisy, "B", base, **KW)
    assert row.verdict == "inconclusive" and row.interval["lo"] < 0 < row.interval["hi"]
    assert row.interval["n"] == 400 and "contains 0" in row.reason


def test_per_task_scores_give_the_macro_mean_difference():
    a = {"x": np.ones(50), "y": np.zeros(10)}
    b = {"x": np.zeros(50), "y": np.zeros(10)}
    row = compare("A > B", "A", a, "B", b, **KW)
    assert row.a_score == pytest.approx(0.5) and row.interval["diff"] == pytest.approx(0.5)  # mean over tasks


def test_a_margin_turns_the_claim_into_within_so_many_points():
    b = scores(0.6)
    a = b.copy()
    a[np.flatnonzero(a)[:8]] = 0  # 8 of 400 examples worse: 2 points below, sharply measured
    assert compare("A > B", "A", a, "B", b, **KW).verdict == "does not"
    within = compare("A within 5", "A", a, "B", b, margin=0.05, **KW)
    assert within.verdict == "reproduces" and "−5 points" in within.reason
    tight = compare("A within 0.1", "A", a, "B", b, margin=0.001, **KW)
    assert tight.interval["hi"] + 0.001 < 0 and tight.verdict == "does not"


def test_seeds_are_averaged_per_example_and_reported_with_their_spread():
    b = scores(0.5)
    runs = [np.maximum(b, scores(0.2, seed=s)) for s in (1, 2, 3)]
    row = compare("A > B", "A", None, "B", b, a_seeds=runs, **KW)
    assert row.a_score == pytest.approx(float(seed_mean(runs).mean()), abs=1e-4)
    assert row.seeds["n"] == 3 and len(row.seeds["diffs"]) == 3 and row.seeds["lo"] < row.seeds["mean"] < row.seeds["hi"]
    table = to_markdown([row])
    assert "**reproduces**" in table and "over 3 seeds" in table and "over 400 test examples" in table


def test_distillation_setting_is_the_best_implicit_among_those_that_keep_specificity():
    res = {"a": {"implicit_acc": 0.9, "gold_nll": 1.0, "specificity_delta": -3 * SPEC_TOLERANCE},  # best, but harms
           "b": {"implicit_acc": 0.6, "gold_nll": 2.0, "specificity_delta": -SPEC_TOLERANCE / 2},
           "c": {"implicit_acc": 0.6, "gold_nll": 1.5, "specificity_delta": 0.0}}
    assert pick(res) == "c"  # b and c qualify and tie on implicit; c has the lower gold NLL
    assert pick({"a": res["a"], "d": {**res["a"], "specificity_delta": -2 * SPEC_TOLERANCE}}) == "d"  # least harm


def test_dfwe_curve_reuses_the_point_it_is_given_and_searches_the_others(monkeypatch):
    """The curve's point at the table's own size is the table's seed-0 search: kept, not searched again."""
    import fusionkit.models.zoo as zoo_module
    from fusionkit.reproduce import search

    def no_build(*a, **k):
        raise RuntimeError("built a zoo")

    monkeypatch.setattr(zoo_module, "build_zoo", no_build)
    known = {"target examples": 128, "DFWE": 0.7, "Pretrain→Finetune": 0.6}
    assert search.dfwe_curve("smoke", (128,), known=known) == [known]
    with pytest.raises(RuntimeError, match="built a zoo"):  # another size is measured
        search.dfwe_curve("smoke", (64, 128), known=known)
