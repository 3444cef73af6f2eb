"""Paths, barriers and planes in weight space, on a tiny random BERT built in code."""
import math

import numpy as np
import pytest
import torch

from fusionkit.data.assets import load_base
from fusionkit.models.evaluator import Evaluator
from fusionkit.models.heads import head_prefixes, split_head
from fusionkit.models.scorer import Scorer
from fusionkit.merging.landscape import barrier, evaluate_grid, float_names, grid_axes, path, plane_through, random_plane


@pytest.fixture
def setup(tiny_bert, toy_task):
    """A live model, a scorer on the toy task, and three bodies: the base and two perturbed copies."""
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    body, head = split_head(model.state_dict(), head_prefixes(model))
    gen = torch.Generator().manual_seed(0)
    a = {k: v.clone() for k, v in body.items()}
    b = {k: v + 0.3 * torch.randn(v.shape, generator=gen) * v.std() if v.is_floating_point() and v.numel() > 1
         else v.clone() for k, v in body.items()}
    c = {k: v + 0.3 * torch.randn(v.shape, generator=gen) * v.std() if v.is_floating_point() and v.numel() > 1
         else v.clone() for k, v in body.items()}
    ev = Evaluator(model, tok, max_length=16)
    scorer = Scorer(ev, {"toy": toy_task}, {"toy": head}, measure="both", dev_examples=24)
    return scorer, a, b, c, head


def test_path_ends_reproduce_each_model(setup):
    scorer, a, b, _, head = setup
    for method in ("linear", "slerp"):
        p = path(scorer, a, b, ts=[-0.5, 0.0, 0.5, 1.0, 1.5], method=method)
        for t, model in ((0.0, a), (1.0, b)):
            loss, acc = scorer.evaluator().loss_and_score(scorer.tasks["toy"], "validation", params=model, head=head)
            assert p.at(t)["loss"]["toy"] == pytest.approx(loss, abs=1e-5)
            assert p.at(t)["accuracy"]["toy"] == pytest.approx(acc)
        assert len(p.points) == 5 and p.values("loss")[0] == p.points[0]["mean_loss"]
    assert scorer.tasks["toy"].data["validation"].num_rows == 24  # cut to `examples`


def test_linear_and_slerp_paths_differ_in_the_middle(setup):
    scorer, a, b, _, _ = setup
    names = float_names(a)
    from fusionkit.merging.landscape import lerp, slerp_states

    mid_l, mid_s = lerp(a, b, 0.5, names), slerp_states(a, b, 0.5, names)
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert mid_s[w].norm() > mid_l[w].norm()  # the arc bulges outwards, the chord cuts inside
    torch.testing.assert_close(slerp_states(a, b, 0.0, names)[w], a[w])


def test_barrier_definitions():
    ts = [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    assert barrier(ts, [9, 1, 1, 1, 1, 1, 9]) == 0.0  # flat inside [0, 1]: extrapolated ends do not count
    line = [1 + 2 * t for t in ts]
    assert barrier(ts, line, reference="line") == pytest.approx(0.0)
    assert barrier(ts, line, reference="mean") == pytest.approx(1.0)  # max(3) - mean(1, 3)
    bump = [0, 1, 2, 4, 2, 1, 0]
    assert barrier(ts, bump) == pytest.approx(3.0)
    acc = [0.5, 0.9, 0.7, 0.4, 0.7, 0.8, 0.5]
    assert barrier(ts, acc, kind="accuracy") == pytest.approx(0.85 - 0.4)
    with pytest.raises(ValueError, match="t = 0 or t = 1"):
        barrier([0.0, 0.5], [1, 2])
    with pytest.raises(ValueError, match="kind"):
        barrier(ts, bump, kind="kl")


def test_plane_basis_is_orthonormal_and_models_land_on_their_coordinates(setup):
    _, a, b, c, _ = setup
    plane = plane_through(a, b, c, labels=("a", "b", "c"))
    from fusionkit.merging.landscape import dot

    n = plane.names
    assert dot(plane.u, plane.u, n) == pytest.approx(1, abs=1e-5)
    assert dot(plane.v, plane.v, n) == pytest.approx(1, abs=1e-5)
    assert abs(dot(plane.u, plane.v, n)) < 1e-5
    dist_ab = math.sqrt(sum(float(((b[k] - a[k]).double() ** 2).sum()) for k in n))
    assert plane.anchors["a"] == (0.0, 0.0)
    assert plane.anchors["b"][0] == pytest.approx(dist_ab) and plane.anchors["b"][1] == 0.0
    assert plane.anchors["c"][1] > 0
    for label, model in (("a", a), ("b", b), ("c", c)):
        x, y, off = plane.project(model)
        assert (x, y) == pytest.approx(plane.anchors[label], abs=1e-3) and off < 1e-3 * dist_ab
        torch.testing.assert_close(plane.state(*plane.anchors[label])[n[3]], model[n[3]].float(), atol=1e-4, rtol=1e-4)
    mean = {k: (a[k].float() + b[k].float() + c[k].float()) / 3 for k in n}  # the uniform soup: in the plane
    x, y, off = plane.project(mean)
    cx = sum(p[0] for p in plane.anchors.values()) / 3
    assert x == pytest.approx(cx, abs=1e-3) and off < 1e-3 * dist_ab
    off_plane = {k: v + 0.01 * torch.ones_like(v) for k, v in mean.items()}
    assert plane.project(off_plane)[2] > 0.1 * off


def test_plane_refuses_colinear_models_and_mismatched_shapes(setup):
    _, a, b, _, _ = setup
    mid = {k: (a[k] + b[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}
    with pytest.raises(ValueError, match="one line"):
        plane_through(a, b, mid)
    bad = dict(b)
    w = "bert.encoder.layer.0.attention.self.query.weight"
    bad[w] = bad[w][:3]
    with pytest.raises(ValueError, match="shape"):
        plane_through(a, bad, mid)


def test_random_directions_have_the_row_norms_of_the_weights(setup):
    _, a, _, _, _ = setup
    plane = random_plane(a, seed=3)
    for n in plane.names:
        for d in (plane.u, plane.v):
            if a[n].dim() < 2:
                assert torch.count_nonzero(d[n]) == 0, n  # biases and norm weights stay put
            else:
                torch.testing.assert_close(d[n].reshape(d[n].shape[0], -1).norm(dim=1),
                                           a[n].float().reshape(a[n].shape[0], -1).norm(dim=1), rtol=1e-4, atol=1e-6)
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(plane.u[w], plane.v[w])
    torch.testing.assert_close(random_plane(a, seed=3).u[w], plane.u[w])  # seeded
    assert not torch.equal(random_plane(a, seed=4).u[w], plane.u[w])
    assert grid_axes(plane, 5, span=0.5) == ([-0.5, -0.25, 0.0, 0.25, 0.5],) * 2


def test_grid_scores_every_point_and_its_origin_is_the_model(setup):
    scorer, a, b, c, head = setup
    plane = plane_through(a, b, c)
    xs, ys = grid_axes(plane, resolution=3, margin=0.0)
    assert xs[0] == pytest.approx(min(p[0] for p in plane.anchors.values()))
    assert ys[-1] == pytest.approx(plane.anchors["C"][1])
    grid = evaluate_grid(scorer, plane, [0.0, xs[-1]], [0.0, ys[-1]])
    assert grid.shape == (2, 2) and grid.seconds > 0
    loss, acc = scorer.evaluator().loss_and_score(scorer.tasks["toy"], "validation", params=a, head=head)
    assert grid.loss[0, 0] == pytest.approx(loss, abs=1e-5) and grid.per_task["accuracy"]["toy"][0, 0] == acc
    assert np.isfinite(grid.loss).all() and ((0 <= grid.accuracy) & (grid.accuracy <= 1)).all()


def test_reinit_fine_tune_starts_elsewhere_and_keeps_old_cache_keys(tiny_bert, toy_task):
    from fusionkit.models.training import expert_recipe, finetune
    from fusionkit.core.profiles import get_profile

    fast = dict(epochs=1, batch_size=32, lr=1e-3, max_length=16)
    assert "reinit" not in expert_recipe(tiny_bert, toy_task, get_profile("smoke"), 0, None)  # old keys unchanged
    same = finetune(tiny_bert, toy_task, "smoke", quiet=True, **fast)
    other = finetune(tiny_bert, toy_task, "smoke", quiet=True, reinit=1, **fast)
    assert other.recipe["reinit"] == 1 and other.id != same.id and "reinit" not in same.recipe
    base, _ = split_head(load_base(tiny_bert, labels=toy_task.label_names)[0].state_dict(), ("classifier",))
    w = "bert.encoder.layer.0.attention.self.query.weight"
    near = (same.body_and_head()[0][w] - base[w]).norm()
    far = (other.body_and_head()[0][w] - base[w]).norm()
    assert far > 5 * near  # one lr-1e-3 epoch moves little; fresh random weights are a different point
    with pytest.raises(ValueError, match="one of them"):
        finetune(tiny_bert, toy_task, "smoke", init=same, reinit=1, quiet=True, **fast)


def test_bfloat16_scoring_is_close_and_precision_is_checked(setup):
    scorer, a, _, _, head = setup
    fast = Scorer(scorer.evaluator(), {"toy": scorer.tasks["toy"]}, {"toy": head}, measure="both", precision="bfloat16")
    assert fast.precision == "bfloat16"
    assert fast(a)["mean_loss"] == pytest.approx(scorer(a)["mean_loss"], rel=0.05)
    assert Scorer(scorer.evaluator(), {}, {}, measure="both", precision="auto").precision in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision"):
        Scorer(scorer.evaluator(), {}, {}, measure="both", precision="fp8")


def test_sub_path_reuses_points(setup):
    scorer, a, b, _, _ = setup
    p = path(scorer, a, b, ts=[-0.5, 0.0, 0.5, 1.0, 1.5])
    inner = p.between(0, 1)
    assert inner.ts == [0.0, 0.5, 1.0] and inner.points[0] is p.points[1] and inner.barrier() == p.barrier()


def test_permuted_base_computes_the_same_function_from_elsewhere(tiny_bert, toy_task):
    from fusionkit.models.training import finetune, permute_ffn_units

    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    ev = Evaluator(model, tok, max_length=16)
    before = ev.logits(toy_task, "test")
    w = "bert.encoder.layer.0.intermediate.dense.weight"
    original = model.state_dict()[w].clone()
    assert permute_ffn_units(model, seed=0) == 2
    torch.testing.assert_close(ev.logits(toy_task, "test"), before, atol=1e-5, rtol=1e-4)  # same function
    assert not torch.equal(model.state_dict()[w], original)  # other coordinates
    fast = dict(epochs=1, batch_size=32, lr=1e-3, max_length=16)
    e = finetune(tiny_bert, toy_task, "smoke", quiet=True, permute=3, **fast)
    assert e.recipe["permute"] == 3 and "reinit" not in e.recipe
    with pytest.raises(ValueError, match="one of them"):
        finetune(tiny_bert, toy_task, "smoke", reinit=1, permute=3, quiet=True, **fast)
