"""Pin the math of the data-free merges beyond TIES (issue #16) on small hand-made tensors: the geometric family
(Model Stock, Karcher, Multi-SLERP, NearSwap), the pruning family (Breadcrumbs, DELLA, SCE, MagMax) and the SVD
family (TSV-M, ISO-C, ISO-CTS). Identical experts giving themselves back is checked for every method in
test_merge_math.py."""
import math

import pytest
import torch

from fusionkit.core.errors import MergeError
from fusionkit.merging.merge import merge
from fusionkit.merging.ops import slerp

S = 0.5 ** 0.5


def w(*vals):
    return {"w": torch.tensor(vals, dtype=torch.float64)}


def zeros(n=2):
    return {"w": torch.zeros(n, dtype=torch.float64)}

# ------------------------------------------------------------------------------------------------ Model Stock
def test_model_stock_t_from_the_angle_between_task_vectors():
    base = zeros()
    a, b = w(1.0, 0.0), w(0.5, 3 ** 0.5 / 2)  # 60° apart, cos = 0.5: t = 2·0.5 / (1 + 0.5) = 2/3
    out = merge("model_stock", [a, b], base=base)["w"]
    torch.testing.assert_close(out, (2 / 3) * (a["w"] + b["w"]) / 2)
    # orthogonal task vectors: cos 0, t = 0, the base; colinear ones: t = 1, the average
    base3 = zeros(3)
    ortho = [w(1.0, 0.0, 0.0), w(0.0, 2.0, 0.0), w(0.0, 0.0, 1.0)]
    torch.testing.assert_close(merge("model_stock", ortho, base=base3)["w"], base3["w"])
    same = [w(1.0, 1.0, 0.0), w(2.0, 2.0, 0.0), w(3.0, 3.0, 0.0)]
    torch.testing.assert_close(merge("model_stock", same, base=base3)["w"], torch.tensor([2.0, 2.0, 0.0]).double())


def test_model_stock_three_models_uses_the_mean_pairwise_cosine_and_filter_wise_rows():
    base = {"w": torch.ones(2, 2, dtype=torch.float64)}
    rows = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
            torch.tensor([[1.0, 1.0], [1.0, 0.0]])]
    experts = [{"w": base["w"] + r.double()} for r in rows]
    # row 0: cosines (0, 1/√2, 1/√2) -> mean √2/3; row 1: all colinear -> cos 1, t = 1
    cos0 = (2 * S) / 3
    t0 = 3 * cos0 / (1 + 2 * cos0)
    out = merge("model_stock", experts, base=base, filter_wise=True)["w"]
    mean = sum(e["w"] for e in experts) / 3
    torch.testing.assert_close(out[0], t0 * mean[0] + (1 - t0) * base["w"][0])
    torch.testing.assert_close(out[1], mean[1])
    whole = merge("model_stock", experts, base=base)["w"]  # one t for the whole tensor
    assert not torch.allclose(whole, out)


def test_model_stock_needs_two_fine_tunes_and_the_base():
    with pytest.raises(MergeError, match="needs the base"):
        merge("model_stock", [w(1.0, 0.0), w(0.0, 1.0)])
    with pytest.raises(MergeError, match="at least 2"):
        merge("model_stock", [w(1.0, 0.0)], base=zeros())


# ------------------------------------------------------------------------------------------------ Karcher, Multi-SLERP
def test_karcher_of_two_is_slerp_at_one_half_and_keeps_the_mean_norm():
    a, b = w(1.0, 0.0), w(0.0, 1.0)
    torch.testing.assert_close(merge("karcher", [a, b])["w"], torch.tensor([S, S]).double())
    torch.testing.assert_close(merge("karcher", [a, b])["w"], slerp(a["w"], b["w"], 0.5))
    far = merge("karcher", [w(2.0, 0.0), w(0.0, 4.0)])["w"]  # direction of the midpoint, norm (2 + 4)/2
    torch.testing.assert_close(far, 3 * torch.tensor([S, S]).double())


def test_karcher_of_three_symmetric_directions_is_their_centre():
    xs = [{"w": torch.eye(3, dtype=torch.float64)[i]} for i in range(3)]
    torch.testing.assert_close(merge("karcher", xs)["w"], torch.full((3,), 1 / 3 ** 0.5, dtype=torch.float64))
    # three directions in one plane at 0°, 30°, 90°: the Fréchet mean is the mean angle, 40°
    ang = [0.0, math.pi / 6, math.pi / 2]
    xs = [w(math.cos(a), math.sin(a)) for a in ang]
    mean = sum(ang) / 3
    out = merge("karcher", xs, max_iter=50, tol=1e-12)["w"]
    torch.testing.assert_close(out, torch.tensor([math.cos(mean), math.sin(mean)]).double())


def test_multislerp_of_two_is_slerp_at_any_weight():
    a, b = w(1.0, 0.0), w(0.0, 1.0)
    for t in (0.1, 0.3, 0.5, 0.8):
        out = merge("multislerp", [a, b], weights=[1 - t, t])["w"]
        torch.testing.assert_close(out, slerp(a["w"], b["w"], t))
    # relative to the base: the spherical average of the task vectors, plus θ₀
    base = w(5.0, 5.0)
    ta = merge("multislerp", [{"w": base["w"] + a["w"]}, {"w": base["w"] + b["w"]}], base=base,
               weights=[0.7, 0.3], task_vectors=True)["w"]
    torch.testing.assert_close(ta, base["w"] + slerp(a["w"], b["w"], 0.3))


def test_multislerp_and_karcher_refuse_bad_input():
    a, b = w(1.0, 0.0), w(0.0, 1.0)
    with pytest.raises(MergeError, match="at least 2"):
        merge("multislerp", [a])
    with pytest.raises(MergeError, match="task_vectors=True .*fix: pass base="):
        merge("multislerp", [a, b], task_vectors=True)
    with pytest.raises(MergeError, match="non-negative"):
        merge("multislerp", [a, b], weights=[1.0, -0.5])
    with pytest.raises(MergeError, match="max_iter=-1 must be an int ≥ 0"):
        merge("karcher", [a, b], max_iter=-1)
    with pytest.raises(MergeError, match="tol=0 must be > 0"):
        merge("karcher", [a, b], tol=0)


# ------------------------------------------------------------------------------------------------ NearSwap
def test_nearswap_swaps_only_the_close_entries():
    a, b = w(0.0, 0.0, 0.0), w(0.01, 0.1, 1.0)
    out = merge("nearswap", [a, b], t=0.05)["w"]
    # weights min(1, 0.05/|a-b|) = (1, 0.5, 0.05)
    torch.testing.assert_close(out, torch.tensor([0.01, 0.05, 0.05]).double())
    torch.testing.assert_close(merge("nearswap", [a, b], t=0.0)["w"], a["w"])
    torch.testing.assert_close(merge("nearswap", [a, b], t=1e9)["w"], b["w"])  # t -> ∞: the second model
    with pytest.raises(MergeError, match="exactly 2"):
        merge("nearswap", [a, b, b])
    with pytest.raises(MergeError, match="t=-1 must be ≥ 0"):
        merge("nearswap", [a, b], t=-1)
