"""The head policy, one rule for every fusion: kept heads for different label spaces, fused heads for a shared one,
explicit heads always kept."""
import pytest
import torch

from fusionkit.core.errors import FusionkitError
from fusionkit.models.heads import head_for, head_policy, shared_label_space, split_head, task_heads


class FakeExpert:
    def __init__(self, name, task, labels, seed):
        self.name, self.task, self.recipe = name, task, {"labels": labels, "head_prefixes": ["classifier"]}
        gen = torch.Generator().manual_seed(seed)
        self._state = {"bert.layer.weight": torch.randn(3, 3, generator=gen),
                       "bert.ids": torch.arange(3),
                       "classifier.weight": torch.randn(len(labels), 3, generator=gen)}

    head_prefixes = property(lambda self: tuple(self.recipe["head_prefixes"]))

    def state_dict(self):
        return dict(self._state)

    def body_and_head(self):
        return split_head(self.state_dict(), self.head_prefixes)


def test_different_label_spaces_keep_each_tasks_first_head():
    a, a2, b = FakeExpert("a", "t1", ["x", "y"], 0), FakeExpert("a2", "t1", ["x", "y"], 1), FakeExpert("b", "t2", ["p", "q", "r"], 2)
    policy = head_policy([a, a2, b])
    assert not shared_label_space([a, a2, b]) and not policy.fused_heads
    assert set(policy.heads) == {"t1", "t2"}
    torch.testing.assert_close(policy.heads["t1"]["classifier.weight"], a.state_dict()["classifier.weight"])  # first
    assert policy.float_names(a.state_dict()) == ["bert.layer.weight"]  # body only, integer buffers stay put
    assert task_heads([a, a2, b], tasks=["t2"]).keys() == {"t2"}
    policy.require(["t1", "t2"])
    with pytest.raises(FusionkitError, match=r"no head for task\(s\) \['t3'\]"):
        policy.require(["t3"])


def test_one_label_space_fuses_heads_and_explicit_heads_win():
    a, b = FakeExpert("a", "t", ["x", "y"], 0), FakeExpert("b", "t", ["x", "y"], 1)
    fused = head_policy([a, b])
    assert fused.fused_heads and fused.heads is None
    assert fused.float_names(a.state_dict()) == ["bert.layer.weight", "classifier.weight"]
    fixed = {"t": b.body_and_head()[1]}
    kept = head_policy([a, b], heads=fixed)
    assert not kept.fused_heads and kept.heads["t"] is fixed["t"]


def test_an_expert_is_scored_on_another_task_with_that_tasks_head():
    own, other = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert head_for("t1", "t1", own, {"t1": other}) is own
    assert head_for("t2", "t1", own, {"t2": other}) is other


def test_heads_come_from_states_already_read():
    a, b = FakeExpert("a", "t1", ["x", "y"], 0), FakeExpert("b", "t2", ["p", "q", "r"], 2)
    states = [a.state_dict(), b.state_dict()]
    states[0] = {**states[0], "classifier.weight": torch.zeros(2, 3)}  # the caller's copy is the one used
    assert torch.equal(head_policy([a, b], states=states).heads["t1"]["classifier.weight"], torch.zeros(2, 3))
