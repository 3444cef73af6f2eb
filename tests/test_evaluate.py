import pytest
import torch

from fusionkit.data.assets import load_base
from fusionkit.models.evaluator import Evaluator
from fusionkit.models.heads import head_prefixes, split_head


def test_logits_come_back_in_split_order(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    ev = Evaluator(model, tok, max_length=16, batch_size=7)
    logits = ev.logits(toy_task, "test")
    texts = toy_task.data["test"]["text"]
    with torch.no_grad():
        direct = torch.cat([model.eval()(**tok([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-4)


def test_params_stand_in_without_touching_the_live_model(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    other, _ = load_base(tiny_bert, labels=toy_task.label_names)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev = Evaluator(model, tok, max_length=16)
    swapped = ev.logits(toy_task, "test", params=other.state_dict())
    other_ev = Evaluator(other, tok, max_length=16)
    torch.testing.assert_close(swapped, other_ev.logits(toy_task, "test"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_head_is_everything_outside_the_body(tiny_bert):
    model, _ = load_base(tiny_bert, labels=["a", "b"])
    assert head_prefixes(model) == ("classifier",)
    body, head = split_head(model.state_dict(), head_prefixes(model))
    assert set(head) == {"classifier.weight", "classifier.bias"}
    assert "bert.pooler.dense.weight" in body


def test_heads_of_other_sizes_swap_in(tiny_bert, toy_task):
    from fusionkit.data.tasks import task_from

    from conftest import toy_frame

    three = toy_frame(60)
    three.loc[::3, "label"] = "neutral"
    task3 = task_from(three, name="three")
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    head3 = {"classifier.weight": torch.zeros(3, 32), "classifier.bias": torch.tensor([0.0, 5.0, 0.0])}
    ev = Evaluator(model, tok, max_length=16)
    logits = ev.logits(task3, "test", head=head3)
    assert logits.shape[1] == 3 and bool((logits.argmax(-1) == 1).all())
    assert ev.score(task3, "test", head=head3) == float((torch.tensor(task3.data["test"]["label"]) == 1).float().mean())


def test_ensemble_of_identical_members_equals_member(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    ev = Evaluator(model, tok, max_length=16)
    sd = model.state_dict()
    assert ev.ensemble_score(toy_task, "test", [(sd, None), (sd, None)]) == ev.score(toy_task, "test")


def test_bfloat16_precision_is_close_to_float32_and_checked(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    exact = Evaluator(model, tok, max_length=16)
    fast = Evaluator(model, tok, max_length=16, precision="bfloat16")
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")
    lo, hi = exact.logits(toy_task, "test"), fast.logits(toy_task, "test")
    assert hi.dtype == torch.float32 and not torch.equal(lo, hi)  # really ran in bfloat16 ...
    torch.testing.assert_close(hi, lo, atol=0.05, rtol=0.05)  # ... and stayed close
    torch.testing.assert_close(exact.logits(toy_task, "test", precision="bfloat16"), hi)  # per-call override
    assert Evaluator(model, tok, precision="auto").precision in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision='fp8'; fix: use one of float32, bfloat16, auto"):
        Evaluator(model, tok, precision="fp8")


def test_float32_leaves_a_callers_autocast_alone(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    ev = Evaluator(model, tok, max_length=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outer = ev.logits(toy_task, "test")
    torch.testing.assert_close(outer, ev.logits(toy_task, "test", precision="bfloat16"))


def test_per_example_correctness_matches_the_score(tiny_bert, toy_task):
    """`correct` is the per-example view of `score`: its mean is the accuracy, in the split's order."""
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    ev = Evaluator(model, tok, max_length=16)
    flags = ev.correct(toy_task, "validation")
    labels = torch.as_tensor(toy_task.data["validation"]["label"])
    assert flags.shape == (len(labels),) and set(flags.tolist()) <= {0.0, 1.0}
    assert flags.mean() == pytest.approx(ev.score(toy_task, "validation"))
    assert (flags == (ev.logits(toy_task, "validation").argmax(-1) == labels).float().numpy()).all()
