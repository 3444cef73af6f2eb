"""Pin the math of the data-free merges beyond TIES (issue #16) on small hand-made tensors: the geometric family
(Model Stock, Karcher, Multi-SLERP, NearSwap), the pruning family (Breadcrumbs, DELLA, SCE, MagMax) and the SVD
family (TSV-M, ISO-C, ISO-CTS). Identical experts giving themselves back is checked for every method in
test_merge_math.py."""
import math

import pytest
import torch

from fusionkit.core.errors import MergeError
from fusionkit.merging.merge import merge, merge_files
from fusionkit.merging.methods.pruning import breadcrumb_mask, magprune, variance_mask
from fusionkit.merging.methods.svd import cts_split
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


# ------------------------------------------------------------------------------------------------ SVD family
def _svd_inputs(seed=0, shape=(6, 4), n=3):
    g = torch.Generator().manual_seed(seed)
    base = {"m": torch.randn(shape, generator=g, dtype=torch.float64), "b": torch.randn(shape[0], generator=g,
                                                                                       dtype=torch.float64)}
    experts = [{k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()}
               for _ in range(n)]
    return base, experts


def test_iso_c_flattens_the_spectrum_of_the_summed_task_matrix():
    base, experts = _svd_inputs()
    out = merge("iso_c", experts, base=base, lam=1.0)
    delta = sum(e["m"] - base["m"] for e in experts)
    s = torch.linalg.svdvals(out["m"] - base["m"])
    torch.testing.assert_close(s, torch.full_like(s, float(torch.linalg.svdvals(delta).mean())))
    u, _, vt = torch.linalg.svd(delta, full_matrices=False)  # same singular vectors as Δ
    torch.testing.assert_close(out["m"] - base["m"], s[0] * u @ vt)
    # 1-D tensors: the mean task vector, scaled
    half = merge("iso_c", experts, base=base, lam=0.5)["b"]
    torch.testing.assert_close(half, base["b"] + 0.5 * sum(e["b"] - base["b"] for e in experts) / 3)


def test_iso_cts_has_a_flat_spectrum_and_is_iso_c_at_full_common_space():
    base, experts = _svd_inputs(1, shape=(8, 6), n=2)
    out = merge("iso_cts", experts, base=base, common_space_fraction=0.5)["m"] - base["m"]
    s = torch.linalg.svdvals(out)
    torch.testing.assert_close(s, torch.full_like(s, float(s.mean())))
    full = merge("iso_cts", experts, base=base, common_space_fraction=1.0)
    iso = merge("iso_c", experts, base=base)
    for k in full:
        torch.testing.assert_close(full[k], iso[k])
    assert cts_split(768, 8, 0.8) == (616, 19) and cts_split(6, 2, 0.5) == (2, 2)
    assert cts_split(7, 2, 0.0) == (1, 3)  # rounding up would overrun the rank; capped at ⌊r/k⌋
    with pytest.raises(MergeError, match="common_space_fraction=1.5 must be in"):
        merge("iso_cts", experts, base=base, common_space_fraction=1.5)


def test_iso_cts_builds_common_and_task_specific_subspaces():
    """6×6, two tasks, split (common 2, 2 per task). Δ = diag(10, 9, 3, 2, 1.7, 0.5): the common space is e1, e2;
    task 1's residual diag(0, 0, 3, 2, 1, 0) gives e3, e4 (its 1 along e5 is dropped), task 2's
    diag(0, 0, 0, 0, 0.7, 0.5) gives e5, e6. All six directions at σ̄ = mean(10, 9, 3, 2, 0.7, 0.5) = 4.2, where
    ISO-C's σ̄ is the mean of Δ's spectrum, 26.2/6."""
    base = {"m": torch.zeros(6, 6, dtype=torch.float64)}
    t1 = torch.diag(torch.tensor([10.0, 0, 3, 2, 1, 0], dtype=torch.float64))
    t2 = torch.diag(torch.tensor([0, 9.0, 0, 0, 0.7, 0.5], dtype=torch.float64))
    assert cts_split(6, 2, 0.5) == (2, 2)
    eye = torch.eye(6, dtype=torch.float64)
    out = merge("iso_cts", [{"m": t1}, {"m": t2}], base=base, common_space_fraction=0.5)["m"]
    torch.testing.assert_close(out, 4.2 * eye)
    torch.testing.assert_close(merge("iso_c", [{"m": t1}, {"m": t2}], base=base)["m"], (26.2 / 6) * eye)


def test_tsv_m_keeps_each_tasks_top_singular_values_and_orthogonal_tasks_add():
    base, experts = _svd_inputs(2, shape=(6, 6), n=3)
    out = merge("tsv_m", experts, base=base, lam=1.0)
    kept = torch.cat([torch.linalg.svdvals(e["m"] - base["m"])[:2] for e in experts])  # ⌊6/3⌋ = 2 per task
    torch.testing.assert_close(torch.linalg.svdvals(out["m"] - base["m"]), kept.sort(descending=True).values)
    torch.testing.assert_close(out["b"], base["b"] + sum(e["b"] - base["b"] for e in experts) / 3)
    # tasks of rank r/k in orthogonal subspaces do not interfere: TSV-M is their sum
    z = {"m": torch.zeros(4, 4, dtype=torch.float64)}
    a, b = torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64)
    a[:2, :2] = torch.tensor([[2.0, 1.0], [0.5, -1.0]])
    b[2:, 2:] = torch.tensor([[0.3, 0.0], [1.0, 4.0]])
    torch.testing.assert_close(merge("tsv_m", [{"m": a}, {"m": b}], base=z, lam=1.0)["m"], a + b)


def test_tsv_m_with_more_tasks_than_rank_falls_back_with_a_note():
    base = {"m": torch.zeros(2, 5, dtype=torch.float64)}
    experts = [{"m": torch.randn(2, 5, dtype=torch.float64)} for _ in range(3)]
    res = merge("tsv_m", experts, base=base, report=True)
    assert any("tsv_m has rank 2 for 3 tasks" in n for n in res.notes)
    torch.testing.assert_close(res.state["m"], sum(e["m"] for e in experts) / 3)


# ------------------------------------------------------------------------------------------------ streaming
@pytest.mark.parametrize("method", ["model_stock", "della", "sce", "iso_cts", "multislerp"])
def test_new_methods_stream_through_safetensors_files(tmp_path, method):
    from safetensors.torch import load_file, save_file

    base, experts = _svd_inputs(3, shape=(5, 4), n=3)
    base, experts = {k: v.float() for k, v in base.items()}, [{k: v.float() for k, v in e.items()} for e in experts]
    paths = []
    for i, e in enumerate(experts):
        save_file(e, str(tmp_path / f"e{i}.safetensors"))
        paths.append(str(tmp_path / f"e{i}.safetensors"))
    save_file(base, str(tmp_path / "base.safetensors"))
    res = merge_files(method, paths, str(tmp_path / "out.safetensors"), base=str(tmp_path / "base.safetensors"))
    assert res.state == {}
    streamed = load_file(str(tmp_path / "out.safetensors"))
    in_memory = merge(method, experts, base=base)
    for k in in_memory:
        assert torch.equal(streamed[k], in_memory[k]), k


# ------------------------------------------------------------------------------------------------ mergekit export
class _E:
    def __init__(self, n):
        self.path, self.name = f"/m/{n}", n


def _merged(method, options, n=2, weights=None):
    from fusionkit.merging.zoo_merge import Merged

    return Merged(method, options, {}, {}, False, [_E(c) for c in "abc"[:n]], weights=weights)


def test_mergekit_export_of_the_data_free_methods():
    from fusionkit.merging.export import mergekit_config, to_yaml

    della = mergekit_config(_merged("della", {"density": 0.4, "epsilon": 0.1, "rescale": "l1", "lam": 0.8, "seed": 0},
                                    weights=[1.0, 0.5]), "/m/base")
    assert della["merge_method"] == "della" and della["base_model"] == "/m/base"
    assert della["models"][1]["parameters"] == {"weight": 0.5, "density": 0.4, "epsilon": 0.1}
    assert della["parameters"] == {"normalize": True, "rescale": True, "lambda": 0.8}
    crumbs = mergekit_config(_merged("breadcrumbs", {"density": 0.2, "gamma": 0.01, "lam": 1.0}), "/m/base")
    assert crumbs["models"][0]["parameters"] == {"weight": 1.0, "density": 0.2, "gamma": 0.01}
    assert crumbs["parameters"] == {"normalize": False, "lambda": 1.0}
    swap = mergekit_config(_merged("nearswap", {"t": 1e-4}), "/m/base")
    assert swap["base_model"] == "/m/a" and swap["models"] == [{"model": "/m/b"}] and swap["parameters"] == {"t": 1e-4}
    stock = mergekit_config(_merged("model_stock", {"filter_wise": False}, n=3), "/m/base")
    assert stock["base_model"] == "/m/base" and len(stock["models"]) == 3 and "parameters" not in stock["models"][0]
    assert "merge_method: model_stock" in to_yaml(stock)
    # mergekit's Model Stock / SCE / Karcher take no weights: unequal coefficients are not exported
    assert mergekit_config(_merged("karcher", {"max_iter": 10, "tol": 1e-5}, weights=[1.0, 2.0])) is None
    assert mergekit_config(_merged("karcher", {"max_iter": 10, "tol": 1e-5}))["parameters"] == \
        {"max_iter": 10, "tol": 1e-5}
    assert "base_model" not in mergekit_config(_merged("multislerp", {"task_vectors": False, "max_iter": 20,
                                                                      "tol": 1e-9}))
    for method in ("magmax", "tsv_m", "iso_c", "iso_cts"):
        assert mergekit_config(_merged(method, {"lam": 1.0})) is None
