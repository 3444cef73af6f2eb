"""Pin the math of the data-free merges beyond TIES (issue #16) on small hand-made tensors: the geometric family
(Model Stock, Karcher, Multi-SLERP, NearSwap), the pruning family (Breadcrumbs, DELLA, SCE, MagMax) and the SVD
family (TSV-M, ISO-C, ISO-CTS). Identical experts giving themselves back is checked for every method in
test_merge_math.py."""
import math

import pytest
import torch

from fusionkit.core.errors import MergeError
from fusionkit.merging.merge import merge
from fusionkit.merging.methods.pruning import breadcrumb_mask, magprune, variance_mask
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


# ------------------------------------------------------------------------------------------------ Breadcrumbs
def test_breadcrumb_mask_keeps_the_middle_magnitudes():
    tau = torch.arange(1, 101, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(50)  # |τ| = 1 … 100
    kept = breadcrumb_mask(tau, density=0.2, gamma=0.05)
    assert int((kept != 0).sum()) == 20
    assert sorted(kept[kept != 0].abs().tolist()) == [float(v) for v in range(76, 96)]  # below the top 5
    # γ + density > 1: fewer outliers go so that the density still holds
    assert int((breadcrumb_mask(tau, 0.98, 0.05) != 0).sum()) == 98
    # ⌊γn⌋ = 0 keeps the largest (mergekit keeps nothing there)
    assert sorted(breadcrumb_mask(tau, 0.1, 0.001).abs()[breadcrumb_mask(tau, 0.1, 0.001) != 0].tolist()) == \
        [float(v) for v in range(91, 101)]


def test_breadcrumbs_and_breadcrumbs_ties_on_hand_made_vectors():
    base = zeros(4)
    a = w(10.0, 3.0, -2.0, 0.1)
    b = w(-1.0, -4.0, 2.5, 20.0)
    # density 0.5, gamma 0.25: each drops its largest (a: 10, b: 20) and its smallest -> a [0, 3, -2, 0],
    # b [0, -4, 2.5, 0]
    ta = merge("breadcrumbs", [a, b], base=base, density=0.5, gamma=0.25, lam=1.0)["w"]
    torch.testing.assert_close(ta, torch.tensor([0.0, -1.0, 0.5, 0.0]).double())
    ties = merge("breadcrumbs_ties", [a, b], base=base, density=0.5, gamma=0.25, lam=1.0)["w"]
    torch.testing.assert_close(ties, torch.tensor([0.0, -4.0, 2.5, 0.0]).double())  # elected signs [0, −, +, 0]
    with pytest.raises(MergeError, match="gamma=1.0 must be in"):
        merge("breadcrumbs", [a, b], base=base, gamma=1.0)
    with pytest.raises(MergeError, match="density=0 must be in"):
        merge("breadcrumbs_ties", [a, b], base=base, density=0)


# ------------------------------------------------------------------------------------------------ DELLA
def test_magprune_keeps_density_on_average_and_more_of_the_large_entries():
    g = torch.Generator().manual_seed(0)
    tau = torch.randn(400, 500, generator=g, dtype=torch.float64)
    kept = magprune(tau, 0.4, 0.15, "none", g)
    assert abs(float((kept != 0).double().mean()) - 0.4) < 0.01
    order = tau.abs().argsort(dim=1)
    alive = (kept != 0).gather(1, order).double()  # columns: each row's entries from smallest to largest
    assert abs(float(alive[:, :50].mean()) - (0.25 + 0.3 * 25 / 499)) < 0.02  # smallest tenth: ≈ 0.25
    assert abs(float(alive[:, -50:].mean()) - (0.55 - 0.3 * 25 / 499)) < 0.02  # largest tenth: ≈ 0.55
    l1 = magprune(tau, 0.4, 0.15, "l1", g)
    torch.testing.assert_close(l1.abs().sum(), tau.abs().sum())


def test_magprune_inverse_rescale_is_unbiased_per_entry():
    tau = torch.linspace(-1, 1, 200, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    mean = torch.stack([magprune(tau, 0.5, 0.3, "inverse", g) for _ in range(4000)]).mean(0)
    assert float((mean - tau).abs().max()) < 0.1 and abs(float((mean - tau).mean())) < 0.01


def test_della_is_seeded_and_density_one_is_ties_or_task_arithmetic():
    g = torch.Generator().manual_seed(2)
    base = {"x": torch.randn(6, 8, generator=g)}
    experts = [{"x": base["x"] + torch.randn(6, 8, generator=g)} for _ in range(3)]
    a = merge("della", experts, base=base, density=0.5, seed=1)["x"]
    assert torch.equal(a, merge("della", experts, base=base, density=0.5, seed=1)["x"])
    assert not torch.equal(a, merge("della", experts, base=base, density=0.5, seed=2)["x"])
    torch.testing.assert_close(merge("della", experts, base=base, density=1.0, lam=0.7)["x"],
                               merge("ties", experts, base=base, density=1.0, lam=0.7)["x"])
    torch.testing.assert_close(merge("della_linear", experts, base=base, density=1.0, lam=0.4)["x"],
                               merge("task_arithmetic", experts, base=base, lam=0.4)["x"])
    with pytest.raises(MergeError, match=r"density ± epsilon must lie inside \(0, 1\).*fix: epsilon < 0.1"):
        merge("della", experts, base=base, density=0.9, epsilon=0.15)
    with pytest.raises(MergeError, match="rescale='sum' must be"):
        merge("della_linear", experts, base=base, rescale="sum")


# ------------------------------------------------------------------------------------------------ SCE
def test_sce_selects_by_variance_weights_by_energy_and_erases_conflicts():
    base = zeros(4)
    a = w(1.0, 2.0, 0.0, -1.0)
    b = w(3.0, -2.0, 0.0, 1.0)
    # variances across (a, b): [1, 4, 0, 1]; select_topk 0.5 of the 3 that vary -> ⌊1.5⌋ = 1 entry: index 1
    assert variance_mask(torch.stack([a["w"], b["w"]]), 0.5).tolist() == [False, True, False, False]
    full = merge("sce", [a, b], base=base)["w"]
    # energies mean(τ²): a 6/4, b 14/4 -> η = (0.3, 0.7); signs of a + b: [+, 0, 0, 0]
    torch.testing.assert_close(full, torch.tensor([(0.3 * 1 + 0.7 * 3) / 1.0, 0.0, 0.0, 0.0]).double())
    c = w(1.0, 2.0, 0.0, 1.0)
    d = w(3.0, -1.0, 0.0, 2.0)
    # energies: c 6/4, d 14/4 -> η = (0.3, 0.7); elected signs [+, +, 0, +]
    out = merge("sce", [c, d], base=base)["w"]
    torch.testing.assert_close(out, torch.tensor([0.3 * 1 + 0.7 * 3, 2.0, 0.0, (0.3 * 1 + 0.7 * 2)]).double())
    # select_topk 0.34: variances [1, 2.25, 0, 0.25] -> ⌊3 · 0.34⌋ = 1 entry (index 1): c 2, d −1; energies
    # (1, 1/4) -> η = (0.8, 0.2); elected sign of 2 − 1 is + -> only c agrees -> 2
    sel = merge("sce", [c, d], base=base, select_topk=0.34)["w"]
    torch.testing.assert_close(sel, torch.tensor([0.0, 2.0, 0.0, 0.0]).double())
    with pytest.raises(MergeError, match="select_topk=0 must be in"):
        merge("sce", [c, d], base=base, select_topk=0)


# ------------------------------------------------------------------------------------------------ MagMax
def test_magmax_takes_the_largest_magnitude_entry():
    base = w(1.0, 1.0, 1.0)
    a, b, c = w(2.0, 1.0, -3.0), w(0.0, 4.0, 1.5), w(1.5, -5.0, 1.0)  # τ: (1, 0, −4), (−1, 3, 0.5), (0.5, −6, 0)
    out = merge("magmax", [a, b, c], base=base, lam=1.0)["w"]
    torch.testing.assert_close(out, torch.tensor([0.0, -5.0, -3.0]).double())  # a tie (|1| = |−1|): the later wins
    half = merge("magmax", [a, b, c], base=base)["w"]  # default λ = 0.5
    torch.testing.assert_close(half, base["w"] + 0.5 * torch.tensor([-1.0, -6.0, -4.0]).double())
