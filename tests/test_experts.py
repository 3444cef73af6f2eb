import json

import pytest

import fusionkit.models.training as training
from fusionkit.core.cache import cache_dir
from fusionkit.models.training import finetune

FAST = dict(epochs=8, batch_size=16, lr=3e-3, max_length=16)


def test_finetune_learns_stores_and_records_recipe(tiny_bert, toy_task):
    e = finetune(tiny_bert, toy_task, "smoke", seed=0, quiet=True, **FAST)
    assert e.scores["test"] >= 0.9 > toy_task.chance("test")  # the toy rule is learnable
    files = {p.name for p in e.path.iterdir()}
    assert {"model.safetensors", "config.json", "recipe.json", "tokenizer.json"} <= files
    recipe = json.loads((e.path / "recipe.json").read_text())
    assert recipe["task"] == "toy" and recipe["seed"] == 0 and recipe["train"]["lr"] == FAST["lr"]
    assert {"torch", "transformers", "fusionkit"} <= set(recipe["versions"])
    assert recipe["head_prefixes"] == ["classifier"]
    # plain transformers reloads it, with label names
    model, _ = e.load()
    assert model.config.id2label[1] == "positive"


def test_asking_again_returns_the_cached_expert_without_training(tiny_bert, toy_task, monkeypatch):
    e1 = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    monkeypatch.setattr("fusionkit.models.training.load_base", lambda *a, **k: pytest.fail("trained again"))
    e2 = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    assert e2.path == e1.path
    assert finetune.__module__ == "fusionkit.models.training"


def test_recipe_changes_give_new_experts(tiny_bert, toy_task):
    a = finetune(tiny_bert, toy_task, "smoke", seed=0, quiet=True, **{**FAST, "epochs": 1})
    b = finetune(tiny_bert, toy_task, "smoke", seed=1, quiet=True, **{**FAST, "epochs": 1})
    assert a.path != b.path


def test_same_seed_same_weights(tiny_bert, toy_task, tmp_path, monkeypatch):
    import torch

    a = finetune(tiny_bert, toy_task, "smoke", seed=3, quiet=True, **{**FAST, "epochs": 1}).state_dict()
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path / "other-cache"))
    b = finetune(tiny_bert, toy_task, "smoke", seed=3, quiet=True, **{**FAST, "epochs": 1}).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_finetune_leaves_nothing_that_looks_finished(tiny_bert, toy_task, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "Evaluator", boom)  # dies after training, while the expert is being written
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    assert list(cache_dir("experts").iterdir()) == []


def test_init_from_expert_keeps_body_and_gets_fresh_head(tiny_bert, toy_task):
    import torch

    from fusionkit.data.tasks import task_from
    from conftest import toy_frame

    src = finetune(tiny_bert, toy_task, "smoke", quiet=True, **{**FAST, "epochs": 1})
    three = toy_frame(60)
    three.loc[::3, "label"] = "neutral"
    target = task_from(three, name="three")
    e = finetune(tiny_bert, target, "smoke", init=src, quiet=True, **{**FAST, "epochs": 1, "lr": 1e-12})
    assert e.recipe["init"] == src.id
    body_src, _ = src.body_and_head()
    body, head = e.body_and_head()
    assert head["classifier.weight"].shape[0] == 3
    # with a vanishing learning rate the body is the source's body
    assert all(torch.allclose(body[k], body_src[k], atol=1e-6) for k in body_src)
