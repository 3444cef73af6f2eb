"""Pin the math of every merge on small hand-made tensors and random linear layers."""
import pytest
import torch
from conftest import ties_by_definition

from fusionkit.merging.registry import METHODS
from fusionkit.core.errors import MergeError
from fusionkit.merging.ops import dare, disjoint_merge, slerp, trim
from fusionkit.merging.merge import merge
from fusionkit.merging.statedict import ParamFilter


def rand_state(seed, shapes=None):
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or {"lin.weight": (4, 6), "lin.bias": (4,), "norm.weight": (6,)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def gram_for(state, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 6, generator=g)
    return {"lin": x.T @ x / 50}


def fisher_for(state, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) for k, v in state.items()}


def inputs(method, n=3):
    experts = [rand_state(i) for i in range(n)]
    base = rand_state(99)
    stats = None
    if METHODS[method].stats == "gram":
        stats = [gram_for(e, i) for i, e in enumerate(experts)]
    if METHODS[method].stats == "fisher":
        stats = [fisher_for(e, i) for i, e in enumerate(experts)]
    return experts, base, stats


TENSOR_METHODS = sorted(m for m, spec in METHODS.items() if spec.level == "tensor")


@pytest.mark.parametrize("method", TENSOR_METHODS)
def test_merging_identical_models_returns_them(method):
    one = rand_state(0)
    n = METHODS[method].n_experts or 3
    base = one if METHODS[method].needs_base else None
    stats = None
    if METHODS[method].stats == "gram":
        stats = [gram_for(one, i) for i in range(n)]
    if METHODS[method].stats == "fisher":
        stats = [fisher_for(one, i) for i in range(n)]
    # identical experts: task vectors are 0 relative to a base equal to them; or equal to each other
    merged = merge(method, [one] * n, base=base, stats=stats)
    for k in one:
        torch.testing.assert_close(merged[k], one[k], atol=1e-5, rtol=1e-5)


def test_regmean_equals_least_squares_on_random_linear_layers():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    xs = [torch.randn(40, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    experts = [{"lin.weight": w} for w in ws]
    stats = [{"lin": x.T @ x} for x in xs]
    merged = merge("regmean", experts, stats=stats)["lin.weight"]
    # min_W Σ ||X_i W^T - X_i W_i^T||² solved directly as one stacked least-squares problem
    X = torch.cat(xs)
    Y = torch.cat([x @ w.T for x, w in zip(xs, ws)])
    direct = torch.linalg.lstsq(X, Y).solution.T
    torch.testing.assert_close(merged, direct, atol=1e-8, rtol=1e-8)


def test_regmean_with_equal_grams_is_the_average():
    experts, _, _ = inputs("average")
    g = gram_for(experts[0], 0)
    merged = merge("regmean", experts, stats=[g, g, g])
    avg = merge("average", experts)
    for k in avg:
        torch.testing.assert_close(merged[k], avg[k], atol=1e-5, rtol=1e-5)


def test_regmean_alpha_zero_is_feature_weighted_average():
    experts, _, stats = inputs("regmean")
    merged = merge("regmean", experts, stats=stats, alpha=0.0)["lin.weight"].double()
    d = torch.stack([torch.diagonal(s["lin"]).double() for s in stats])  # [N, in]
    w = torch.stack([e["lin.weight"].double() for e in experts])  # [N, out, in]
    expect = (d[:, None, :] * w).sum(0) / d.sum(0)
    torch.testing.assert_close(merged, expect, atol=1e-5, rtol=1e-5)


def test_regmean_singular_gram_falls_back_with_a_note():
    experts = [{"lin.weight": torch.randn(3, 4)} for _ in range(2)]
    zero = {"lin": torch.zeros(4, 4)}
    res = merge("regmean", experts, stats=[zero, zero], report=True)
    assert any("singular" in n for n in res.notes)
    assert torch.isfinite(res.state["lin.weight"]).all()


def test_ties_on_hand_made_vectors():
    base = {"w": torch.zeros(4)}
    a = {"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}
    b = {"w": torch.tensor([1.0, 2.0, -0.2, -4.0])}
    # density 0.5 keeps [3, 2] of a and [2, -4] of b; signs: Σ = [3, 2, 0, -2] -> [+, +, 0, -]
    out = merge("ties", [a, b], base=base, density=0.5, lam=1.0)["w"]
    torch.testing.assert_close(out, torch.tensor([3.0, 2.0, 0.0, -4.0]))
    out = merge("ties", [a, b], base=base, density=1.0, lam=1.0)["w"]
    # full density: sign [+, +, +, -]; entry 0 mean(3,1)=2, entry 1 only b (2), entry 2 only a (0.5), entry 3 only b
    torch.testing.assert_close(out, torch.tensor([2.0, 2.0, 0.5, -4.0]))


def test_ties_in_float32_matches_the_float64_definition_with_weights():
    """TIES computes in float32 (for speed); the same merge written out in float64 - trim, elect by weighted mass,
    weighted mean of the agreeing entries - lands within float32 rounding, with unequal weights and λ ≠ 1."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(300, 40, generator=g) * 0.05
    experts = [base + 0.01 * torch.randn(300, 40, generator=g) for _ in range(4)]
    w, density, lam = torch.tensor([1.0, 0.5, 2.0, 0.7], dtype=torch.float64), 0.3, 1.3
    got = merge("ties", [{"w": e} for e in experts], base={"w": base}, weights=w.tolist(), density=density,
                lam=lam)["w"]
    want, _ = ties_by_definition(base, experts, w, density, lam)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-7)
    assert not torch.equal(got, merge("ties", [{"w": e} for e in experts], base={"w": base}, density=density,
                                      lam=lam)["w"])  # the weights matter


def test_trim_and_disjoint_merge():
    t = torch.tensor([0.1, -5.0, 2.0, 0.3])
    assert trim(t, 0.5).tolist() == [0.0, -5.0, 2.0, 0.0]
    taus = torch.tensor([[1.0, -1.0], [3.0, 2.0]])
    torch.testing.assert_close(disjoint_merge(taus, torch.ones(2)), torch.tensor([2.0, 2.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trim_keeps_exactly_the_top_k_in_any_precision(dtype):
    # float64 task vectors (θᵢ − θ₀ as TIES computes them) once lost the k-th entry to a float32-rounded cut
    for seed in range(8):  # a float32 rounding goes up about half the time
        tau = (torch.randn(1000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 3).to(dtype)
        kept = trim(tau, 0.2) != 0
        assert int(kept.sum()) == 200, seed
        assert tau.abs()[kept].min() >= tau.abs()[~kept].max()


def test_dare_inverse_rescale_is_unbiased_and_l1_keeps_norm():
    tau = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([dare(tau, 0.7, "inverse", g) for _ in range(2000)]).mean(0)
    assert (mean - tau).abs().max() < 0.15 and abs(float((mean - tau).mean())) < 0.01
    kept = dare(tau, 0.7, "inverse", g)
    assert 0.2 < float((kept != 0).double().mean()) < 0.4
    l1 = dare(tau, 0.7, "l1", g)
    torch.testing.assert_close(l1.abs().sum(), tau.abs().sum())


def test_dare_is_deterministic_and_p0_is_task_arithmetic():
    experts, base, _ = inputs("dare")
    a = merge("dare", experts, base=base, p=0.5, seed=1)
    b = merge("dare", experts, base=base, p=0.5, seed=1)
    c = merge("dare", experts, base=base, p=0.5, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["lin.weight"], c["lin.weight"])
    p0 = merge("dare", experts, base=base, p=0.0, lam=0.4)
    ta = merge("task_arithmetic", experts, base=base, lam=0.4)
    for k in ta:
        torch.testing.assert_close(p0[k], ta[k])


def test_slerp_endpoints_midpoint_and_colinear_fallback():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    s = 0.5 ** 0.5
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([s, s]))  # on the circle, not the chord
    c = torch.tensor([2.0, 0.0])
    torch.testing.assert_close(slerp(a, c, 0.25), torch.tensor([1.25, 0.0]))  # colinear: linear


def test_fisher_with_equal_fishers_is_the_average():
    experts, _, _ = inputs("average")
    f = fisher_for(experts[0], 0)
    merged = merge("fisher", experts, stats=[f, f, f])
    avg = merge("average", experts)
    for k in avg:
        torch.testing.assert_close(merged[k], avg[k], atol=1e-5, rtol=1e-5)


def test_fisher_favours_the_confident_expert():
    a, b = {"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])}
    out = merge("fisher", [a, b], stats=[{"w": torch.tensor([3.0])}, {"w": torch.tensor([1.0])}], normalize=False)["w"]
    torch.testing.assert_close(out, torch.tensor([0.25]))


def test_task_arithmetic_and_weights():
    base = {"w": torch.tensor([1.0])}
    a, b = {"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}
    assert merge("task_arithmetic", [a, b], base=base, lam=0.5)["w"].item() == pytest.approx(3.0)
    assert merge("average", [a, b], weights=[3, 1])["w"].item() == pytest.approx(2.5)
    per_layer = {"w": [1, 0]}
    assert merge("average", [a, b], weights=per_layer)["w"].item() == pytest.approx(2.0)


def test_filter_keeps_base_for_excluded_tensors():
    experts, base, _ = inputs("task_arithmetic")
    out = merge("task_arithmetic", experts, base=base, filter=ParamFilter(exclude=("norm.*",)))
    assert torch.equal(out["norm.weight"], base["norm.weight"])
    assert not torch.equal(out["lin.weight"], base["lin.weight"])


def test_bad_input_is_named():
    experts, base, stats = inputs("regmean")
    with pytest.raises(MergeError, match="unknown merge method 'tie'.*ties"):
        merge("tie", experts)
    with pytest.raises(MergeError, match="needs the base"):
        merge("ties", experts)
    with pytest.raises(MergeError, match="density=1.5 must be in"):
        merge("ties", experts, base=base, density=1.5)
    with pytest.raises(MergeError, match="alpha=-0.1 must be in"):
        merge("regmean", experts, stats=stats, alpha=-0.1)
    with pytest.raises(MergeError, match="2 coefficients for 3 experts"):
        merge("average", experts, weights=[1, 2])
    with pytest.raises(MergeError, match="exactly 2"):
        merge("slerp", experts)
    with pytest.raises(MergeError, match="at least 2"):
        merge("average", experts[:1])
    with pytest.raises(MergeError, match="gram statistics"):
        merge("regmean", experts)
    bad = dict(experts[1], **{"lin.weight": torch.zeros(3, 6)})
    with pytest.raises(ValueError, match=r"'lin.weight' has shape \(3, 6\) in expert 1"):
        merge("average", [experts[0], bad])
    nan = dict(experts[1], **{"lin.bias": torch.tensor([float("nan")] * 4)})
    with pytest.raises(ValueError, match="expert 1 has NaN or Inf .*'lin.bias'"):
        merge("average", [experts[0], nan])  # found in the merged tensor, named from the inputs
    with pytest.raises(ValueError, match="expert 1 has NaN or Inf .*'lin.bias'"):
        merge("ties", [experts[0], nan], base=experts[2])  # a trim could drop it: the inputs are checked first
    with pytest.raises(ValueError, match="the base has NaN or Inf .*'lin.bias'"):
        merge("task_arithmetic", experts[:2], base=nan)
    huge = {n: torch.full_like(t, 3e38) for n, t in experts[0].items()}
    zero = {n: torch.zeros_like(t) for n, t in experts[0].items()}
    with pytest.raises(ValueError, match="overflowed to Inf from finite inputs"):
        merge("task_arithmetic", [huge, huge], base=zero, lam=1.0)


def test_streamed_file_merge_equals_in_memory(tmp_path):
    from safetensors.torch import load_file, save_file

    from fusionkit.merging.merge import merge_files

    experts = [rand_state(i) for i in range(3)]
    base = rand_state(99)
    paths = []
    for i, e in enumerate(experts):
        save_file(e, str(tmp_path / f"e{i}.safetensors"))
        paths.append(str(tmp_path / f"e{i}.safetensors"))
    save_file(base, str(tmp_path / "base.safetensors"))
    res = merge_files("ties", paths, str(tmp_path / "out.safetensors"), base=str(tmp_path / "base.safetensors"),
                      density=0.5)
    assert res.state == {}  # nothing accumulated in memory
    streamed = load_file(str(tmp_path / "out.safetensors"))
    in_memory = merge("ties", experts, base=base, density=0.5)
    assert streamed.keys() == in_memory.keys()
    for k in in_memory:
        assert torch.equal(streamed[k], in_memory[k])


def test_writer_refuses_out_of_order_and_leaves_nothing_half_written(tmp_path):
    from fusionkit.merging.safetensors_io import SafetensorsWriter

    layout = {"a": ("F32", (2,)), "b": ("F32", (3,))}
    with pytest.raises(ValueError, match="layout order"):
        with SafetensorsWriter(tmp_path / "x.safetensors", layout) as w:
            w.write("b", torch.zeros(3))
    with pytest.raises(ValueError, match="only 1 of 2"):
        with SafetensorsWriter(tmp_path / "x.safetensors", layout) as w:
            w.write("a", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_regmean_minimises_its_regression_loss():
    from fusionkit.merging.methods.regmean import regression_loss

    experts, _, stats = inputs("regmean")
    ws = [e["lin.weight"] for e in experts]
    gs = [s["lin"] for s in stats]
    reg = merge("regmean", experts, stats=stats)["lin.weight"]
    avg = merge("average", experts)["lin.weight"]
    assert regression_loss(reg, ws, gs) < regression_loss(avg, ws, gs)
    assert regression_loss(reg, ws, gs) <= regression_loss(reg + 1e-3 * torch.randn_like(reg), ws, gs)


def test_lazy_state_reads_what_safetensors_wrote(tmp_path):
    from safetensors.torch import save_file

    from fusionkit.merging.safetensors_io import LazyState

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16),
               "d": torch.tensor(1.5), "e": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"k": "v"})
    lazy = LazyState(tmp_path / "x.safetensors")
    assert set(lazy) == set(tensors) and lazy.metadata() == {"k": "v"} and lazy.shape("a") == (3, 4)
    for k, v in tensors.items():
        assert torch.equal(lazy[k], v) and lazy[k].dtype == v.dtype


def test_a_streamed_view_gives_each_tensor_until_the_next_read_and_finds_names_without_reading(tmp_path,
                                                                                                 monkeypatch):
    from safetensors.torch import save_file

    from fusionkit.merging.safetensors_io import LazyState, lazy_state

    tensors = {"small": torch.randn(3), "big": torch.randn(40, 5), "half": torch.randn(7).to(torch.bfloat16),
               "int": torch.arange(4), "empty": torch.zeros(0, 2)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    streamed = lazy_state(tmp_path / "x.safetensors", reuse=True)  # views of the file's pages, released as it goes
    for _ in range(2):
        for k, v in tensors.items():
            got = streamed[k]
            assert torch.equal(got, v) and got.dtype == v.dtype
    # `in` answers from the header: a merge checks every name of every input, which must not read the tensors
    monkeypatch.setattr(LazyState, "__getitem__", lambda self, name: pytest.fail(f"{name} was read"))
    assert "big" in streamed and "nope" not in streamed


def test_options_and_defaults_come_from_the_signature():
    """Each option's default is written once, in the method's signature; the registry reads it from there."""
    import inspect

    for name, spec in METHODS.items():
        params = {k: p.default for k, p in inspect.signature(spec.fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert params == {k: o.default for k, o in spec.options.items()}, name
        assert spec.reference.startswith("https://") and spec.summary, name
    assert METHODS["ties"].options["lam"].default == 1.0 and METHODS["task_arithmetic"].options["lam"].default == 0.4


def test_registering_a_method_without_documented_options_fails():
    from fusionkit.merging.registry import option, register

    with pytest.raises(TypeError, match="must match the documented options"):
        @register("undocumented", "x", reference="https://example.org")
        def _m(tensors, base, w, ctx, *, k=1):
            return tensors[0]
    with pytest.raises(TypeError, match="each with a default"):
        @register("no_default", "x", reference="https://example.org", k=option("k"))
        def _n(tensors, base, w, ctx, *, k):
            return tensors[0]
    assert "undocumented" not in METHODS and "no_default" not in METHODS


def test_a_zoo_level_method_refuses_to_merge_tensors():
    with pytest.raises(MergeError, match="greedy_soup merges a whole zoo"):
        merge("greedy_soup", [rand_state(0), rand_state(1)])


def test_fisher_normalisation_divides_each_experts_fisher_by_its_norm():
    """Two experts, one with a 100x larger Fisher everywhere: unnormalised it takes over; normalised (MergeLM's
    normalize_fisher_weight) the relative shapes decide, and λᵢ (the coefficients) scale each model."""
    a, b = {"w": torch.zeros(4)}, {"w": torch.ones(4)}
    fa, fb = {"w": torch.tensor([1.0, 1.0, 3.0, 1.0])}, {"w": 100 * torch.tensor([1.0, 3.0, 1.0, 1.0])}
    plain = merge("fisher", [a, b], stats=[fa, fb], eps=0.0, normalize=False)["w"]
    assert (plain > 0.9).all()  # b's large Fisher wins every entry
    norm = merge("fisher", [a, b], stats=[fa, fb], eps=0.0)["w"]  # normalised by default (chosen on dev)
    na, nb = fa["w"] / fa["w"].norm(), fb["w"] / fb["w"].norm()
    torch.testing.assert_close(norm, nb / (na + nb))
    weighted = merge("fisher", [a, b], stats=[fa, fb], eps=0.0, normalize=True, weights=[3.0, 1.0])["w"]
    torch.testing.assert_close(weighted, nb / (3 * na + nb))
