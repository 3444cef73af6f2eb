"""Ensemble distillation of a zoo on the tiny random BERT: the loss by hand, the teachers' mean logits, a student
that learns every task from unlabeled text, merge-then-distil starting closer, the cache, and clear errors."""
import numpy as np
import pytest
import torch

import fusionkit.distill.ensemble as ensemble
from fusionkit.core.errors import FusionkitError
from fusionkit.distill.ensemble import distill_zoo, ensemble_kl, teacher_logits, zoo_texts
from fusionkit.merging.zoo_merge import merge_zoo, score_merged
from fusionkit.models.evaluator import Evaluator
from fusionkit.models.training import finetune
from fusionkit.models.zoo import Zoo


def test_ensemble_kl_is_the_task_mean_of_tau_squared_batch_mean_kl():
    g = torch.Generator().manual_seed(0)
    tau = 2.0
    student = {"a": torch.randn(5, 2, generator=g), "b": torch.randn(5, 3, generator=g)}
    teacher = {"a": torch.randn(5, 2, generator=g), "b": torch.randn(5, 3, generator=g)}
    got = ensemble_kl(student, {t: torch.log_softmax(z / tau, -1) for t, z in teacher.items()}, tau)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    by_hand = []
    for t in student:
        p, q = softmax(teacher[t].numpy() / tau), softmax(student[t].numpy() / tau)
        by_hand.append(tau ** 2 * (p * np.log(p / q)).sum(-1).mean())
    assert float(got) == pytest.approx(float(np.mean(by_hand)), rel=1e-5)


def test_teachers_of_a_shared_task_are_the_mean_of_their_logits(tiny_zoo):
    """Two experts trained on one task teach it together: the mean of their plain logits."""
    e2 = finetune(tiny_zoo.base, tiny_zoo.tasks["two"], tiny_zoo.profile, seed=1, name="two-b", quiet=True)
    zoo = Zoo("shared", tiny_zoo.profile, {"two": tiny_zoo.tasks["two"]}, [tiny_zoo.experts[0], e2])
    texts = ["good movie", "the plot was awful and poor"]
    model, tok = zoo.experts[0].load()
    got = teacher_logits(zoo, texts, Evaluator(model, tok, max_length=16))["two"]
    plain = []
    for e in zoo.experts:
        m, _ = e.load()
        with torch.no_grad():
            plain.append(torch.cat([m.eval()(**tok([t], return_tensors="pt")).logits for t in texts]))
    assert (plain[0] - plain[1]).abs().max() > 1e-3  # really two teachers
    torch.testing.assert_close(got, (plain[0] + plain[1]) / 2, atol=1e-5, rtol=1e-4)


def test_a_student_from_the_base_learns_every_task_from_unlabeled_text(tiny_zoo, monkeypatch):
    texts = zoo_texts(tiny_zoo)
    assert len(texts) == len(set(texts)) and len(texts) > 100  # both tasks' training texts, once each
    seen = []
    student = distill_zoo(tiny_zoo, steps=60, lr=3e-3, callback=seen.append, quiet=True)
    kl = [t["kl"] for t in student.trace]
    assert seen == student.trace and len(kl) == 60
    assert np.mean(kl[-10:]) < 0.5 * np.mean(kl[:5])  # the student moves toward the teachers
    assert student.cost["teacher_forwards"] == len(texts) * 2 and student.cost["examples_seen"] == 60 * 16
    model, tok = tiny_zoo.experts[0].load()
    scores = score_merged(student, tiny_zoo, Evaluator(model, tok, max_length=16), splits=("validation",))
    for t, task in tiny_zoo.tasks.items():  # never saw a label, yet above chance on both tasks
        assert scores[t]["validation"] > task.chance("validation") + 0.15, (t, scores)
    monkeypatch.setattr(ensemble, "_distil", lambda *a, **k: pytest.fail("distilled again"))
    again = distill_zoo(tiny_zoo, steps=60, lr=3e-3, quiet=True)
    assert again.path == student.path and again.trace == student.trace


def test_merge_then_distil_starts_closer_than_the_base(tiny_zoo):
    merged = merge_zoo("average", tiny_zoo)
    from_merge = distill_zoo(tiny_zoo, steps=3, lr=3e-3, init=merged, quiet=True)
    from_base = distill_zoo(tiny_zoo, steps=3, lr=3e-3, quiet=True)
    assert from_merge.path != from_base.path and from_merge.options["init"]["method"] == "average"
    assert from_merge.trace[0]["kl"] < from_base.trace[0]["kl"]


def test_bad_input_is_one_clear_error(tiny_zoo):
    with pytest.raises(FusionkitError, match="no texts"):
        distill_zoo(tiny_zoo, texts=[], quiet=True)
    with pytest.raises(FusionkitError, match="steps >= 1"):
        distill_zoo(tiny_zoo, steps=0, quiet=True)
    other = merge_zoo("average", tiny_zoo)
    other.heads = {"two": other.heads["two"]}
    with pytest.raises(FusionkitError, match="start from a merge of this zoo"):
        distill_zoo(tiny_zoo, init=other, quiet=True)


def test_cli_distill_zoo_json_and_text_file(tiny_zoo, tmp_path, capsys, monkeypatch):
    """`fusionkit distill-zoo` as a user runs it (the zoo swapped for the tiny one): the student beside its start,
    from a merge, on the user's own text; a missing text file is one line."""
    import json
    from pathlib import Path

    import fusionkit.models.zoo as zoo_module
    from fusionkit.cli import main

    monkeypatch.setattr(zoo_module, "build_zoo", lambda *a, **k: tiny_zoo)
    texts = tmp_path / "unlabeled.txt"
    texts.write_text("good movie\n\nthe plot was awful\nquite a fine story and great acting\n", encoding="utf-8")
    assert main(["distill-zoo", "--texts", str(texts), "--init", "average", "--steps", "4", "--lr", "3e-3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cost"]["texts"] == 3 and out["cost"]["steps"] == 4 and out["options"]["init"]["method"] == "average"
    assert out["start"]["from"] == "average" and set(out["student"]) == set(out["start"]["scores"]) == {"two", "three"}
    assert all(0 <= s["test"] <= 1 for s in out["student"].values())
    kl = [json.loads((Path(out["path"]) / "recipe.json").read_text())["trace"][i]["kl"] for i in range(4)]
    assert out["kl_window"] == 2 and out["kl_first"] == pytest.approx((kl[0] + kl[1]) / 2, abs=1e-5)
    assert main(["distill-zoo", "--texts", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_student_is_scored_per_example_like_a_merge(tiny_zoo):
    """merged_correct takes anything with a body and heads (a student, the multi-task model), as the notebooks'
    merge-vs-distil tables need; each task read through its own head."""
    from fusionkit.reproduce.merging import correct, merged_correct

    student = distill_zoo(tiny_zoo, steps=3, lr=3e-3, quiet=True)
    ev = tiny_zoo.evaluator("float32")
    got = merged_correct(tiny_zoo, ev, student, "validation")
    want = correct(tiny_zoo, ev, student.body, student.heads, "validation")
    assert set(got) == set(tiny_zoo.tasks) and all((got[t] == want[t]).all() for t in got)
