"""The fused CPU kernels (merging/fused.py) compute what the row-block operations define: the same merges (TIES,
the average, task arithmetic), the same trim cuts, the same NaN checks - only in one pass. Each test runs a kernel
against the row-block path (the kernels switched off) or against the definition written out."""
import pytest
import torch
from conftest import ties_by_definition

from fusionkit.core.errors import MergeError, NonFiniteInput
from fusionkit.merging import fused, ops
from fusionkit.merging.merge import merge
from fusionkit.merging.ops import trim_cut

pytestmark = pytest.mark.skipif(not fused.available("cpu", torch.zeros(1)), reason="numba is a dependency: "
                                "`pip install -e .` installs it")

SHAPES = {"emb.weight": (301, 17), "lin.weight": (6, 5, 4), "lin.bias": (23,), "scale": ()}

MERGES = [
    ("average", {}), ("average", {"normalize": False}), ("task_arithmetic", {"lam": 0.7}),
    ("ties", {"density": 0.3}), ("ties", {"density": 0.01, "lam": 1.3}), ("ties", {"density": 1.0}),
    ("ties", {"density": 0.5, "lam": 1.0}),
]


def states(seed, dtype=torch.float32, quantized=False):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}
    step = (lambda s: torch.randint(-6, 7, s, generator=g) / 4) if quantized else (
        lambda s: torch.randn(s, generator=g, dtype=torch.float64))
    experts = [{k: (base[k] + 0.1 * step(s)).to(dtype) for k, s in SHAPES.items()} for _ in range(3)]
    return {k: v.to(dtype) for k, v in base.items()}, experts


def row_blocks_only(monkeypatch):
    monkeypatch.setattr(fused, "available", lambda *a, **k: False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [[1.0, 0.5, 2.0], [1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])
@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("method,options", MERGES, ids=[f"{m}-{o}" for m, o in MERGES])
def test_a_fused_merge_equals_the_row_block_merge(monkeypatch, method, options, quantized, weights, dtype):
    """Entry for entry: the election, the agreeing set and the mean are the same (weights that are powers of two
    make every product exact on both paths); a sum of products may round differently where the row blocks fuse a
    multiply-add - an ulp of its largest term at each step."""
    base, experts = states(0, dtype, quantized)
    fast = merge(method, experts, base=base, weights=weights, **options)
    row_blocks_only(monkeypatch)
    slow = merge(method, experts, base=base, weights=weights, **options)
    eps = torch.finfo(dtype).eps
    for k in slow:
        assert fast[k].dtype == slow[k].dtype == dtype
        ref = experts[0][k] if method == "average" else base[k]
        terms = sum(abs(wi) * (e[k] - ref).abs() for wi, e in zip(weights, experts)) * options.get("lam", 1.0)
        scale = torch.stack([base[k].abs(), slow[k].abs(), terms, *[e[k].abs() for e in experts]]).amax(0)
        assert ((fast[k] - slow[k]).abs() <= 4 * eps * scale).all(), k
        if method == "ties" and options.get("lam", 1.0) == 1.0 and weights != [1.0, -2.0, 0.5]:
            assert torch.equal(fast[k], slow[k]), k  # nothing left to round differently


def test_the_fused_ties_is_the_definition_entry_by_entry():
    """Against TIES written out in float64 - trim at the k-th largest |τᵢ| (ties kept), elect by weighted mass,
    weighted mean of the agreeing entries - on a tensor of 10⁵ entries (the kernel's blocks and their tail)."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(401, 250, generator=g) * 0.05
    experts = [base + 0.01 * torch.randn(401, 250, generator=g) for _ in range(4)]
    w, density, lam = torch.tensor([1.0, 0.5, 2.0, 0.7], dtype=torch.float64), 0.2, 0.9
    got = fused.ties(experts, base, w, [trim_cut(e, base, density) for e in experts], lam)
    want, sign = ties_by_definition(base, experts, w, density, lam)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-7)
    # a broken election (the unweighted sum's sign) differs somewhere: the comparison can fail
    assert (sign != ties_by_definition(base, experts, torch.ones(4), density, lam)[1]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kth_largest_from_the_bits_is_kthvalue(dtype):
    """Magnitudes partitioned as unsigned integers: the same order statistic as kthvalue, with many ties, zeros,
    +Inf (largest) and the smallest subnormal."""
    g = torch.Generator().manual_seed(1)
    values = (torch.randint(0, 50, (5000,), generator=g) / 8).to(dtype)
    values[:300] = 0
    values[300] = float("inf")
    values[301] = torch.finfo(dtype).tiny / 4
    for k in (1, 2, 17, 300, 2500, 4699, 4700, 4999, 5000):
        want = values.kthvalue(values.numel() - k + 1).values
        assert torch.equal(ops._kth_largest(values.clone(), k), want), k


@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 0.97])
@pytest.mark.parametrize("quantized", [False, True])
def test_the_fused_bracket_cut_is_the_whole_tensors_kth_value(monkeypatch, density, quantized):
    base, experts = states(2, quantized=quantized)
    x, ref = experts[0]["emb.weight"], base["emb.weight"]
    tau = (x - ref).reshape(-1)
    want = tau.abs().kthvalue(tau.numel() - max(1, round(density * tau.numel())) + 1).values
    assert torch.equal(trim_cut(x, ref, density), want)  # small: |τ| whole, in one fused pass
    monkeypatch.setattr(ops, "CUT_WHOLE_FUSED", 1)  # the sampled bracket, counted and kept in one fused pass
    monkeypatch.setattr(ops, "CUT_SAMPLE", 200)
    assert torch.equal(trim_cut(x, ref, density), want)
    monkeypatch.setattr(ops, "CUT_SIGMAS", 0.0)  # a bracket of zero width: it misses, and the fallback selects
    assert torch.equal(trim_cut(x, ref, density), want)


def test_the_bracket_keeps_everything_within_even_past_its_room():
    """More entries inside [lo, hi] than the room for twice the expected count: a second pass keeps them all."""
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(20000, generator=g), torch.randn(20000, generator=g)
    d = (x - ref).abs()
    lo, hi = float(d.quantile(0.1)), float(d.quantile(0.9))
    above, kept, zeros, finite = fused.count_and_keep(x, ref, lo, hi, expected=0)  # room: 4096 < ~16000 inside
    inside = d[(d >= lo) & (d <= hi)]
    assert finite and above == int((d > hi).sum()) and kept.numel() == inside.numel() > 4096 and zeros == 0
    assert torch.equal(kept.sort().values, inside.sort().values)


@pytest.mark.parametrize("fused_cut", [True, False])
@pytest.mark.parametrize("bracket", [False, True])
@pytest.mark.parametrize("density", [0.01, 0.03, 0.3, 0.9])
def test_cuts_of_mostly_unchanged_tensors(monkeypatch, fused_cut, bracket, density):
    """An expert that left 95% of a tensor as it was (an embedding's unseen tokens, a frozen layer): |τ| is mostly
    exact zeros. The cut is still kthvalue's - 0 once k reaches into the zeros - whichever path takes it."""
    if not fused_cut:
        row_blocks_only(monkeypatch)
    if bracket:
        monkeypatch.setattr(ops, "CUT_WHOLE_FUSED", 1)
        monkeypatch.setattr(ops, "CUT_WHOLE", 1)
        monkeypatch.setattr(ops, "CUT_SAMPLE", 400)
    base, experts = states(8)
    ref = base["emb.weight"]
    changed = torch.rand(ref.shape, generator=torch.Generator().manual_seed(0)) < 0.05
    x = torch.where(changed, experts[0]["emb.weight"], ref)
    tau = (x - ref).abs().reshape(-1)
    want = tau.kthvalue(tau.numel() - max(1, round(density * tau.numel())) + 1).values
    assert torch.equal(trim_cut(x, ref, density), want)
    assert (want == 0) == (density > 0.05)


def test_the_kth_largest_of_mostly_zeros():
    values = torch.zeros(100_000)
    values[::20] = torch.arange(1, 5001, dtype=torch.float32)
    for k in (1, 17, 5000, 5001, 60_000, 100_000):
        want = values.kthvalue(values.numel() - k + 1).values
        assert torch.equal(ops._kth_largest(values.clone(), k), want), k


@pytest.mark.parametrize("where", ["expert", "base"])
@pytest.mark.parametrize("bracket", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ties_names_the_input_with_a_nan_or_inf_found_by_the_fused_cut(monkeypatch, where, bracket, bad):
    """TIES no longer reads every input before merging: its cut reads every task-vector entry, in one pass, and a
    NaN or Inf there is traced to the input it came from."""
    if bracket:
        monkeypatch.setattr(ops, "CUT_WHOLE_FUSED", 1)
    base, experts = states(4)
    spoiled = {k: v.clone() for k, v in (base if where == "base" else experts[1]).items()}
    spoiled["emb.weight"][100, 3] = bad
    if where == "base":
        base = spoiled
    else:
        experts[1] = spoiled
    label = "the base" if where == "base" else "expert 1"
    with pytest.raises(MergeError, match=f"{label} has NaN or Inf .*'emb.weight'"):
        merge("ties", experts, base=base, density=0.3)
    with pytest.raises(NonFiniteInput):  # the cut itself, without the driver
        trim_cut(experts[1]["emb.weight"], base["emb.weight"], 0.3)


def test_ties_at_density_one_still_checks_every_entry():
    base, experts = states(5)
    experts[2] = dict(experts[2], **{"lin.bias": experts[2]["lin.bias"].clone().fill_(float("nan"))})
    with pytest.raises(MergeError, match="expert 2 has NaN or Inf .*'lin.bias'"):
        merge("ties", experts, base=base, density=1.0)


def test_inputs_the_kernels_do_not_take_go_through_the_row_blocks():
    """Half-precision inputs (the row blocks convert a block at a time) and mixed dtypes are not fused; the merge
    is the same either way it is computed."""
    base, experts = states(6)
    half = [{k: v.bfloat16() for k, v in e.items()} for e in experts]
    hbase = {k: v.bfloat16() for k, v in base.items()}
    assert not fused.available("cpu", hbase["emb.weight"], *[e["emb.weight"] for e in half])
    assert not fused.available("cpu", base["emb.weight"], base["emb.weight"].double())
    assert not fused.available("meta", base["emb.weight"])
    out = merge("ties", half, base=hbase, density=0.3)
    assert out["emb.weight"].dtype == torch.bfloat16


def test_an_average_of_one_tensor_with_itself_is_the_tensor():
    x = torch.randn(5, 3)
    assert torch.equal(fused.linear([x, x], x, torch.tensor([1.0, 3.0], dtype=torch.float64), 0.25), x)
    assert torch.equal(fused.linear([x, x], x, torch.tensor([1.0, 3.0], dtype=torch.float64), 1.0, 4.0), 4 * x)
