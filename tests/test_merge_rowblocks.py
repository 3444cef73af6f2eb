"""Row blocks (merging/rowblocks.py) change where a merge computes, never what: every blocked method gives the
same tensors whether a tensor is one block or many, TIES's cut is the whole tensor's k-th value, and DARE's and
DELLA's masks continue one random stream across blocks."""
import pytest
import torch

from fusionkit.merging import fused, ops, rowblocks
from fusionkit.merging.merge import merge
from fusionkit.merging.ops import trim, trim_cut

SHAPES = {"emb.weight": (97, 13), "lin.weight": (6, 5, 4), "lin.bias": (23,), "scale": ()}

BLOCKED = [
    ("average", {}), ("average", {"normalize": False}), ("task_arithmetic", {"lam": 0.7}),
    ("ties", {"density": 0.3}), ("ties", {"density": 0.01, "lam": 1.3}), ("ties", {"density": 1.0}),
    ("dare", {"p": 0.4, "seed": 3}), ("dare", {"p": 0.4, "then": "ties"}), ("dare", {"p": 0.6, "rescale": "l1"}),
    ("della", {}), ("della", {"rescale": "l1"}), ("della", {"rescale": "none", "density": 0.3, "epsilon": 0.1}),
    ("della_linear", {"seed": 5}),
]


def states(seed, quantized=False):
    """A base and three experts; ``quantized``: task vectors on a grid of quarter steps, so many magnitudes tie
    (also at every trim cut)."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    step = (lambda s: torch.randint(-6, 7, s, generator=g) / 4) if quantized else (lambda s: torch.randn(s, generator=g))
    return base, [{k: base[k] + 0.1 * step(s) for k, s in SHAPES.items()} for _ in range(3)]


@pytest.fixture(autouse=True)
def row_blocks_only(monkeypatch):
    """These tests are about the row-block path; the fused CPU kernels, which take float32 and float64 merges on
    the CPU in one pass, have their own (tests/test_merge_fused.py)."""
    monkeypatch.setattr(fused, "available", lambda *a, **k: False)


def blocked(monkeypatch, entries):
    monkeypatch.setitem(rowblocks.BLOCK_ELEMENTS, "cpu", entries)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("method,options", BLOCKED, ids=[f"{m}-{o}" for m, o in BLOCKED])
def test_blocked_merge_equals_the_whole_tensor_merge(monkeypatch, method, options, quantized):
    base, experts = states(0, quantized)
    w = [1.0, 0.5, 2.0]
    blocked(monkeypatch, 1 << 30)  # every tensor one block: the whole-tensor computation
    whole = merge(method, experts, base=base, weights=w, **options)
    for entries in (1, 20, 64):  # one row per block, a few rows, several
        blocked(monkeypatch, entries)
        parts = merge(method, experts, base=base, weights=w, **options)
        for k in whole:
            assert torch.equal(parts[k], whole[k]), (entries, k)


@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 0.5, 0.97])
@pytest.mark.parametrize("quantized", [False, True])
def test_trim_cut_is_the_whole_tensors_kth_value(monkeypatch, density, quantized):
    base, experts = states(1, quantized)
    x, ref = experts[0]["emb.weight"], base["emb.weight"]
    tau = (x - ref).reshape(-1)
    k = max(1, round(density * tau.numel()))
    want = tau.abs().kthvalue(tau.numel() - k + 1).values
    blocked(monkeypatch, 30)
    monkeypatch.setattr(ops, "CUT_WHOLE", 1)  # the sampled bracket, on a tensor of 1261 entries
    monkeypatch.setattr(ops, "CUT_SAMPLE", 200)
    assert torch.equal(trim_cut(x, ref, density), want)
    monkeypatch.setattr(ops, "CUT_SIGMAS", 0.0)  # a bracket of zero width: it misses, and the fallback selects
    assert torch.equal(trim_cut(x, ref, density), want)
    kept = (tau.abs() >= want) & (tau != 0)  # a zero entry at a zero cut stays zero
    assert torch.equal(trim(x - ref, density, trim_cut(x, ref, density)).reshape(-1) != 0, kept)
    assert int((tau.abs() >= want).sum()) >= k  # ties with the cut are all kept


def test_a_cut_per_block_would_be_another_method(monkeypatch):
    """The point of the whole-tensor cut: one row of large task-vector entries, one of small; trimmed per block,
    each row would keep its own top 50%, but TIES keeps the tensor's top 50%, the large row."""
    base = {"w": torch.zeros(2, 4)}
    a = {"w": torch.tensor([[4.0, 5.0, 6.0, 7.0], [0.1, 0.2, 0.3, 0.4]])}
    blocked(monkeypatch, 4)  # one row per block
    out = merge("ties", [a, {"w": torch.zeros(2, 4)}], base=base, density=0.5)["w"]
    assert torch.equal(out, torch.tensor([[4.0, 5.0, 6.0, 7.0], [0.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("method,options", [("average", {}), ("task_arithmetic", {"lam": 0.4})])
def test_float32_linear_merges_round_like_float64(method, options):
    """Average and task arithmetic sum small differences in float32 (θ₁ + Σwᵢ(θᵢ − θ₁)/Σw, θ₀ + λΣwᵢτᵢ): within
    two float32 ulps of the float64 merge, ulps of the larger of the inputs and the result (an entry that cancels
    to near 0 keeps the inputs' rounding)."""
    base, experts = states(2)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    got = merge(method, experts, base=base, weights=w.tolist(), **options)
    for k, b in base.items():
        xs = [e[k].double() for e in experts]
        if method == "average":
            want = sum(wi * x for wi, x in zip(w, xs)) / w.sum()
        else:
            want = b.double() + options["lam"] * sum(wi * (x - b.double()) for wi, x in zip(w, xs))
        scale = torch.stack([x.abs() for x in xs + [b.double(), want]]).amax(0)
        ulp = 2 * torch.finfo(torch.float32).eps * scale
        assert ((got[k].double() - want).abs() <= ulp).all(), k


def test_float64_inputs_compute_in_float64():
    base, experts = states(3)
    as64 = lambda s: {k: v.double() for k, v in s.items()}  # noqa: E731
    out = merge("task_arithmetic", [as64(e) for e in experts], base=as64(base), lam=1.0)
    want = base["emb.weight"].double() + sum(e["emb.weight"].double() - base["emb.weight"].double() for e in experts)
    assert out["emb.weight"].dtype == torch.float64
    torch.testing.assert_close(out["emb.weight"], want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("method,options", [("ties", {"density": 0.3}), ("dare", {"p": 0.5, "then": "ties"}),
                                            ("della", {}), ("average", {})])
def test_an_explicit_device_gives_the_same_merge(method, options):
    base, experts = states(4)
    cpu = merge(method, experts, base=base, **options)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        other = merge(method, experts, base=base, device=device, **options)
        for k in cpu:
            assert other[k].device == cpu[k].device
            torch.testing.assert_close(other[k], cpu[k], rtol=0, atol=1e-6 if device == "cuda" else 0)
