"""The logit ensemble on the tiny random BERT: its logits are the mean of each (different) member's plain forward pass,
and its members pair each expert's body with the right head. Experts are held in memory - nothing is trained."""
import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fusionkit.core.errors import MergeError
from fusionkit.data.assets import load_base
from fusionkit.merging.zoo_merge import ensemble_members
from fusionkit.models.evaluator import Evaluator
from fusionkit.models.experts import Expert
from fusionkit.models.heads import split_head
from fusionkit.models.zoo import Zoo


def perturbed(model, seed, scale=0.3):
    """A copy of ``model`` with every parameter moved by seeded noise: a different member."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other.eval()


def plain_logits(model, tok, texts):
    """One plain forward pass per text, no Evaluator: the independent reference."""
    with torch.no_grad():
        return torch.cat([model.eval()(**tok([t], return_tensors="pt")).logits for t in texts])


@dataclass
class MemoryExpert(Expert):
    """An expert whose weights live in memory instead of a cache folder."""

    state: dict | None = None

    def state_dict(self) -> dict:
        return self.state


def expert(name, task, model, labels):
    recipe = {"task": task, "labels": list(labels), "head_prefixes": ["classifier"]}
    return MemoryExpert(name, Path("/nonexistent") / name, recipe, state=model.state_dict())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny forward passes: one intra-op thread is faster, and not slowed by a busy machine's other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def members(tiny_bert, toy_task):
    base, tok = load_base(tiny_bert, labels=toy_task.label_names)
    return base.eval(), tok, [perturbed(base, 1), perturbed(base, 2), perturbed(base, 3)]


def test_ensemble_logits_are_the_mean_of_different_members_plain_logits(members, toy_task):
    """Evaluator.ensemble_logits = (1/N) Σ member logits, each member's from a plain forward pass, in split order."""
    base, tok, models = members
    texts = toy_task.data["test"]["text"]
    direct = [plain_logits(m, tok, texts) for m in models[:2]]
    assert (direct[0] - direct[1]).abs().max() > 1e-2  # really different members
    ev = Evaluator(base, tok, max_length=16, batch_size=7)  # several batches, length-sorted
    got = ev.ensemble_logits(toy_task, "test", [(models[0].state_dict(), None), (models[1].state_dict(), None)])
    torch.testing.assert_close(got, (direct[0] + direct[1]) / 2, atol=1e-5, rtol=1e-4)
    # the score is the metric of those mean logits
    labels = torch.as_tensor(toy_task.data["test"]["label"])
    acc = float((((direct[0] + direct[1]) / 2).argmax(-1) == labels).float().mean())
    members2 = [(m.state_dict(), None) for m in models[:2]]
    assert ev.ensemble_score(toy_task, "test", members2) == pytest.approx(acc)


def test_ensemble_members_pair_each_body_with_its_own_or_the_tasks_head(members, toy_task):
    """ensemble_members: an expert trained on the task keeps its own head; one from another task (same labels) gets
    the head of the first expert trained on the task, on its own body - and the ensemble averages those logits."""
    base, tok, models = members
    labels = toy_task.label_names
    experts = [expert("a", "toy", models[0], labels), expert("b", "toy", models[1], labels),
               expert("c", "elsewhere", models[2], labels)]
    zoo = Zoo("mem", None, {"toy": toy_task}, experts)
    got = ensemble_members(zoo)
    assert list(got) == ["toy"] and len(got["toy"]) == 3
    heads = [split_head(m.state_dict(), ("classifier",))[1] for m in models]
    for (body, head), m, own in zip(got["toy"], models, (heads[0], heads[1], heads[0])):
        assert not any(k.startswith("classifier") for k in body)
        assert all(torch.equal(body[k], v) for k, v in m.state_dict().items() if not k.startswith("classifier"))
        assert head.keys() == own.keys() and all(torch.equal(head[k], own[k]) for k in own)
    # expert c on task toy: its body with a's head, computed with a plain model
    c_on_toy = copy.deepcopy(models[2])
    c_on_toy.load_state_dict({**models[2].state_dict(), **heads[0]})
    texts = toy_task.data["test"]["text"]
    a, b, c, c_own = (plain_logits(m, tok, texts) for m in (models[0], models[1], c_on_toy, models[2]))
    ev = Evaluator(base, tok, max_length=16)
    torch.testing.assert_close(ev.ensemble_logits(toy_task, "test", got["toy"]), (a + b + c) / 3,
                               atol=1e-5, rtol=1e-4)
    assert (c - c_own).abs().max() > 1e-3  # the head rule is visible in the logits


def test_ensemble_members_refuse_mixed_label_spaces(members, toy_task):
    """Members of different label spaces are refused, naming the multi-task fix."""
    _, _, models = members
    experts = [expert("a", "toy", models[0], toy_task.label_names), expert("b", "toy", models[1], ["x", "y"])]
    with pytest.raises(MergeError, match="share one label space.*multi-task"):
        ensemble_members(Zoo("mem", None, {"toy": toy_task}, experts))


def test_zoo_subset_keeps_the_named_experts_their_tasks_and_heads(members, toy_task):
    """Zoo.subset: the named experts in that order, only their tasks and training data, each task's head from the
    subset's own experts; fewer than two or an unknown name is one clear error."""
    from fusionkit.core.errors import FusionkitError

    _, _, models = members
    labels = toy_task.label_names
    experts = [expert("a", "toy", models[0], labels), expert("b", "toy", models[1], labels),
               expert("c", "other", models[2], labels)]
    zoo = Zoo("mem", None, {"toy": toy_task, "other": toy_task}, experts,
              train_tasks={e.name: toy_task for e in experts})
    sub = zoo.subset(["c", "b"])
    assert [e.name for e in sub.experts] == ["c", "b"] and list(sub.tasks) == ["other", "toy"]
    assert set(sub.train_tasks) == {"b", "c"} and zoo.subset(["a", "b"]).tasks.keys() == {"toy"}
    b_head = split_head(models[1].state_dict(), ("classifier",))[1]
    assert all(torch.equal(sub.heads()["toy"][k], v) for k, v in b_head.items())  # b's, not the whole zoo's a's
    assert not torch.equal(zoo.heads()["toy"]["classifier.weight"], b_head["classifier.weight"])
    with pytest.raises(FusionkitError, match="two or more distinct"):
        zoo.subset(["a"])
    with pytest.raises(FusionkitError, match="no expert 'z'"):
        zoo.subset(["a", "z"])
