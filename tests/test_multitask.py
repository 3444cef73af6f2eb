"""The multi-task reference model: one body, a head per task, trained on the union of the tasks' data."""
import pytest
import torch

import fusionkit.models.multitask as multitask
from conftest import toy_frame
from fusionkit.data.tasks import task_from
from fusionkit.models.evaluator import Evaluator
from fusionkit.models.multitask import train_multitask, union_by_task
from fusionkit.models.training import finetune

FAST = dict(epochs=6, batch_size=16, lr=3e-3, max_length=16)


@pytest.fixture
def two_tasks():
    two = task_from(toy_frame(240), name="two")
    df = toy_frame(240, seed=1)
    df.loc[::3, "label"] = "neutral"
    return {"two": two, "three": task_from(df, name="three")}


def test_one_body_learns_every_task_and_is_cached(tiny_bert, two_tasks, monkeypatch):
    mt = train_multitask(tiny_bert, two_tasks, "smoke", quiet=True, **FAST)
    assert set(mt.heads) == {"two", "three"}
    assert mt.heads["two"]["classifier.weight"].shape[0] == 2 and mt.heads["three"]["classifier.weight"].shape[0] == 3
    assert not any(k.startswith("classifier") for k in mt.body)
    # the same number of steps as two experts with this recipe: one pass over the union per epoch
    assert mt.recipe["steps"] == FAST["epochs"] * sum(-(-len(t.data["train"]) // 16) for t in two_tasks.values())
    expert = finetune(tiny_bert, two_tasks["two"], "smoke", quiet=True, **FAST)
    model, tok = expert.load()
    ev = Evaluator(model, tok, max_length=16)
    for name, task in two_tasks.items():
        score = ev.score(task, "validation", params=mt.body, head=mt.heads[name])
        assert score > task.chance("validation") + 0.15, (name, score)
    monkeypatch.setattr(multitask, "fit", lambda *a, **k: pytest.fail("trained again"))
    again = train_multitask(tiny_bert, two_tasks, "smoke", quiet=True, **FAST)
    assert again.path == mt.path
    torch.testing.assert_close(again.body["bert.embeddings.word_embeddings.weight"],
                               mt.body["bert.embeddings.word_embeddings.weight"])


def test_one_task_trains_exactly_like_an_expert(tiny_bert, two_tasks):
    """With one task the loop is a plain fine-tune: same seed, same weights."""
    mt = train_multitask(tiny_bert, {"two": two_tasks["two"]}, "smoke", seed=3, quiet=True, **FAST)
    expert = finetune(tiny_bert, two_tasks["two"], "smoke", seed=3, quiet=True, **FAST)
    body, head = expert.body_and_head()
    for k, v in body.items():
        torch.testing.assert_close(mt.body[k], v)
    torch.testing.assert_close(mt.heads["two"]["classifier.weight"], head["classifier.weight"])


def test_partitions_of_one_task_become_its_whole_training_set(two_tasks):
    a = two_tasks["two"].subsample({"train": 50}, seed=0)
    b = two_tasks["two"].subsample({"train": 30}, seed=1)  # (they may overlap: a union keeps every row given)
    union = union_by_task({"p0": a, "p1": b, "other": two_tasks["three"]})
    assert set(union) == {"two", "three"} and len(union["two"].data["train"]) == 80
