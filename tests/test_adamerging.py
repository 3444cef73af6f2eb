"""AdaMerging on the tiny zoo: the entropy by hand, the differentiable merge equal to the registry's task
arithmetic, coefficients that move and lower the dev entropy, both granularities, the live curve, clear errors."""
import numpy as np
import pytest
import torch

from fusionkit.core.errors import MergeError
from fusionkit.merging.merge import merge
from fusionkit.merging.methods.adamerging import adamerge, combine, entropy
from fusionkit.merging.zoo_merge import merge_zoo
from fusionkit.models.zoo import Zoo


def test_entropy_is_the_batch_mean_of_minus_p_log_p():
    z = torch.tensor([[0.0, 0.0], [2.0, -1.0], [5.0, 5.0]])
    p = np.exp(z.numpy()) / np.exp(z.numpy()).sum(-1, keepdims=True)
    assert float(entropy(z)) == pytest.approx(float((-(p * np.log(p)).sum(-1)).mean()), rel=1e-6)
    assert float(entropy(torch.tensor([[0.0, 0.0]]))) == pytest.approx(np.log(2), rel=1e-6)


def test_the_differentiable_merge_is_task_arithmetic_with_those_coefficients():
    g = torch.Generator().manual_seed(0)
    base = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}
    experts = [{n: v + torch.randn(v.shape, generator=g) for n, v in base.items()} for _ in range(3)]
    taus = {n: torch.stack([e[n] - base[n] for e in experts]) for n in base}
    lam = torch.tensor([[0.1, 0.7], [0.5, 0.0], [0.9, 0.3]])  # [experts, tensors]
    got = combine(base, taus, lam, ["a", "b"])
    want = merge("task_arithmetic", experts, base=base, lam=1.0, weights={"a": lam[:, 0].tolist(),
                                                                          "b": lam[:, 1].tolist()})
    for n in base:
        torch.testing.assert_close(got[n], want[n])
    task_wise = combine(base, taus, lam[:, 0], ["a", "b"])
    torch.testing.assert_close(task_wise["b"], merge("task_arithmetic", experts, base=base, lam=1.0,
                                                     weights=lam[:, 0].tolist())["b"])


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_coefficients_learned_on_dev_text_lower_the_entropy(tiny_zoo, granularity):
    seen = []
    merged, trace = adamerge(tiny_zoo, granularity=granularity, steps=25, lr=0.05, init=0.3, batch_size=16,
                             quiet=True, callback=seen.append)
    assert seen == trace and len(trace) == 25 and set(trace[0]["per_task"]) == {"two", "three"}
    first, last = np.mean([t["entropy"] for t in trace[:5]]), np.mean([t["entropy"] for t in trace[-5:]])
    assert last < first - 0.02, (first, last)
    w = merged.weights
    lams = np.array(w) if granularity == "task" else np.array(list(w.values()))
    assert lams.min() >= 0 and lams.max() <= 1 and np.abs(lams - 0.3).max() > 0.05  # moved, clipped to [0, 1]
    if granularity == "layer":
        assert set(w) == {n for n in merged.body if merged.body[n].is_floating_point()}
    # the returned model is the registry's task arithmetic with the learned coefficients
    again = merge_zoo("task_arithmetic", tiny_zoo, lam=1.0, weights=w)
    name = next(iter(merged.body))
    torch.testing.assert_close(merged.body[name], again.body[name])
    assert merged.method == "adamerging" and merged.options["texts"] == {
        t: len(task.data["validation"]) for t, task in tiny_zoo.tasks.items()}


def test_the_zoo_level_entry_runs_through_merge_zoo_with_its_seed(tiny_zoo):
    a = merge_zoo("adamerging", tiny_zoo, granularity="task", steps=3, lr=0.05, seed=1)
    b = merge_zoo("adamerging", tiny_zoo, granularity="task", steps=3, lr=0.05, seed=1)
    assert a.weights == b.weights and len(a.trace) == 3 and a.options["seed"] == 1


def test_bad_input_is_named_before_any_training(tiny_zoo):
    with pytest.raises(MergeError, match="granularity='block' must be 'task' or 'layer'"):
        adamerge(tiny_zoo, granularity="block")
    with pytest.raises(MergeError, match="steps=0 must be an integer >= 1"):
        adamerge(tiny_zoo, steps=0)
    with pytest.raises(MergeError, match=r"\['two'\] have none.*texts="):
        adamerge(tiny_zoo, texts={"two": []})
    one = Zoo("one", tiny_zoo.profile, tiny_zoo.tasks, tiny_zoo.experts[:1], tiny_zoo.train_tasks, base=tiny_zoo.base)
    with pytest.raises(MergeError, match="at least 2 experts"):
        adamerge(one)


def test_the_live_entropy_curve_grows_with_each_step():
    from fusionkit.viz.widgets import LiveEntropy

    live = LiveEntropy(["two", "three"])
    live.update({"step": 1, "entropy": 1.5, "per_task": {"two": 0.6, "three": 0.9}})
    live.update({"step": 2, "entropy": 1.2, "per_task": {"two": 0.5, "three": 0.7}})
    assert list(live.figure.data[0].y) == [1.5, 1.2] and list(live.figure.data[2].y) == [0.9, 0.7]
