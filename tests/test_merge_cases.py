"""Merge cases test_merge_math.py leaves open: RegMean with α < 1 and weights, TIES's λ, weights and ties at the
trim cut, DARE followed by TIES, and the task-vector analysis helpers. Expected values are computed here, by least
squares or by hand, never by calling the function under test again."""
import math

import pytest
import torch

from fusionkit.merging.analysis import cosine_matrix, layer_of, sign_conflicts
from fusionkit.merging.merge import merge
from fusionkit.merging.ops import trim


# ------------------------------------------------------------------------------------------- RegMean
def _regmean_problem(seed=0, n=3, out=5, d=8):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(out, d, generator=g, dtype=torch.float64) for _ in range(n)]
    xs = [torch.randn(30, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
          for _ in range(n)]  # correlated inputs: the off-diagonal of each Gram matters
    bs = [torch.randn(out, generator=g, dtype=torch.float64) for _ in range(n)]
    experts = [{"lin.weight": w, "lin.bias": b} for w, b in zip(ws, bs)]
    stats = [{"lin": x.T @ x} for x in xs]
    return experts, stats


def _stacked_lstsq(experts, stats, alpha, weights):
    """min_W Σ wᵢ ‖X̃ᵢWᵀ − X̃ᵢWᵢᵀ‖² with X̃ᵢᵀX̃ᵢ = G̃ᵢ = αGᵢ + (1−α)diag(Gᵢ), as one stacked least-squares problem."""
    rows, targets = [], []
    for e, s, w in zip(experts, stats, weights):
        g = s["lin"]
        g_mod = alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))
        x_mod = torch.linalg.cholesky(g_mod).T  # G̃ = L Lᵀ, so X̃ = Lᵀ has X̃ᵀX̃ = G̃
        rows.append(math.sqrt(w) * x_mod)
        targets.append(math.sqrt(w) * x_mod @ e["lin.weight"].T)
    return torch.linalg.lstsq(torch.cat(rows), torch.cat(targets)).solution.T


def test_regmean_with_alpha_below_one_and_weights_is_least_squares_on_the_modified_grams():
    """RegMean at α = 0.5 with per-expert weights solves the weighted least squares on G̃ = αG + (1−α)diag(G)."""
    experts, stats = _regmean_problem()
    alpha, weights = 0.5, [0.5, 2.0, 1.0]
    merged = merge("regmean", experts, stats=stats, alpha=alpha, weights=weights)
    direct = _stacked_lstsq(experts, stats, alpha, weights)
    torch.testing.assert_close(merged["lin.weight"], direct, atol=1e-8, rtol=1e-8)
    # the check can tell: ignoring α, or ignoring the weights, gives a visibly different answer
    assert (direct - _stacked_lstsq(experts, stats, 1.0, weights)).abs().max() > 1e-2
    assert (direct - _stacked_lstsq(experts, stats, alpha, [1.0, 1.0, 1.0])).abs().max() > 1e-2
    # the bias (no Gram) is the weighted average Σ wᵢbᵢ / Σ wᵢ
    bias = sum(w * e["lin.bias"] for w, e in zip(weights, experts)) / sum(weights)
    torch.testing.assert_close(merged["lin.bias"], bias, atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------------------- TIES
def test_ties_lambda_scales_the_merged_task_vector_around_a_nonzero_base():
    """TIES returns θ₀ + λτ_M: with λ = 0.3 the hand-computed τ_M is scaled by 0.3 and added to θ₀."""
    base = {"w": torch.tensor([1.0, -1.0, 2.0, 0.5])}
    a = {"w": base["w"] + torch.tensor([3.0, -1.0, 0.5, 2.0])}
    b = {"w": base["w"] + torch.tensor([1.0, 2.0, -0.2, -4.0])}
    # density 0.5 keeps [3, ., ., 2] of a and [., 2, ., -4] of b; signs [+, +, 0, -]; τ_M = [3, 2, 0, -4]
    out = merge("ties", [a, b], base=base, density=0.5, lam=0.3)["w"]
    torch.testing.assert_close(out, base["w"] + 0.3 * torch.tensor([3.0, 2.0, 0.0, -4.0]))
    zero = merge("ties", [a, b], base=base, density=0.5, lam=0.0)["w"]
    torch.testing.assert_close(zero, base["w"])


def test_ties_weights_enter_the_sign_election_and_the_disjoint_mean():
    """Per-expert weights w = (1, 3, 1) flip the elected sign of two entries and weight the agreeing ones' mean."""
    base = {"w": torch.zeros(3)}
    taus = [torch.tensor([3.0, 1.0, -1.0]), torch.tensor([-2.0, 2.0, 2.0]), torch.tensor([1.0, 4.0, -3.0])]
    experts = [{"w": t} for t in taus]
    # unweighted: Σ = [2, 7, -2] -> [+, +, -]; means of the agreeing entries: (3+1)/2, (1+2+4)/3, (-1-3)/2
    plain = merge("ties", experts, base=base, density=1.0, lam=1.0)["w"]
    torch.testing.assert_close(plain, torch.tensor([2.0, 7 / 3, -2.0]))
    # weighted: Σwτ = [3-6+1, 1+6+4, -1+6-3] = [-2, 11, 2] -> [-, +, +]: only expert 1 agrees on entries 0 and 2;
    # entry 1: Σwτ / Σw = 11 / 5
    weighted = merge("ties", experts, base=base, density=1.0, lam=1.0, weights=[1.0, 3.0, 1.0])["w"]
    torch.testing.assert_close(weighted, torch.tensor([-2.0, 11 / 5, 2.0]))


def test_trim_keeps_every_entry_tied_with_the_cut():
    """ops.trim's docstring: "Entries tied with the cut are kept" - so ties can keep more than density × n entries."""
    t = torch.tensor([1.0, -2.0, 2.0, 0.5, 2.0])
    # density 0.4 of 5 entries: k = 2, the cut is the 2nd largest magnitude, 2.0, shared by three entries
    assert trim(t, 0.4).tolist() == [0.0, -2.0, 2.0, 0.0, 2.0]
    # and through TIES (one expert against a zero base, with a zero second expert): all three survive
    out = merge("ties", [{"w": t}, {"w": torch.zeros(5)}], base={"w": torch.zeros(5)}, density=0.4)["w"]
    torch.testing.assert_close(out, torch.tensor([0.0, -2.0, 2.0, 0.0, 2.0]))


# ------------------------------------------------------------------------------------------- DARE then TIES
def _dare_experts(seed=3):
    g = torch.Generator().manual_seed(seed)
    shapes = {"lin.weight": (8, 10), "lin.bias": (8,)}
    base = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    experts = [{k: base[k] + torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
               for _ in range(3)]
    return base, experts


def _hand_ties(vectors, weights):
    """TIES's sign election and disjoint mean, one entry at a time in plain Python."""
    out = []
    for entries in zip(*[v.reshape(-1).tolist() for v in vectors]):
        total = sum(w * x for w, x in zip(weights, entries))
        sign = (total > 0) - (total < 0)
        agree = [(w, x) for w, x in zip(weights, entries) if x != 0 and ((x > 0) - (x < 0)) == sign]
        den = sum(w for w, _ in agree)
        out.append(sum(w * x for w, x in agree) / den if agree and den != 0 else 0.0)
    return torch.tensor(out, dtype=torch.float64).view(vectors[0].shape)


def test_dare_then_ties_is_sign_election_and_disjoint_mean_of_the_dropped_vectors():
    """DARE with then='ties' = TIES's election + disjoint mean applied to each expert's dropped-and-rescaled τᵢ."""
    base, experts = _dare_experts()
    p, seed, lam, weights = 0.5, 7, 0.8, [1.0, 2.0, 0.5]
    # Each expert's sparsified τᵢ, read through the public API: task arithmetic (λ = 1) with a one-hot weight vector.
    # The masks are seeded per (seed, tensor, expert), so they are the same whatever the merge after the drop.
    dropped = []
    for i in range(3):
        onehot = [1.0 if j == i else 0.0 for j in range(3)]
        m = merge("dare", experts, base=base, p=p, seed=seed, lam=1.0, weights=onehot)
        dropped.append({k: m[k] - base[k] for k in base})
    for i, d in enumerate(dropped):  # really DARE: every entry is 0 or τ/(1−p), about half of them dropped
        kept_all = []
        for k in base:
            tau = experts[i][k] - base[k]
            kept = d[k] != 0
            torch.testing.assert_close(d[k][kept], tau[kept] / (1 - p))
            kept_all.append(kept.reshape(-1))
        assert 0.3 < float(torch.cat(kept_all).double().mean()) < 0.7
    merged = merge("dare", experts, base=base, p=p, seed=seed, lam=lam, then="ties", weights=weights)
    for k in base:
        expect = base[k] + lam * _hand_ties([d[k] for d in dropped], weights)
        torch.testing.assert_close(merged[k], expect, atol=1e-12, rtol=1e-12)
    # and the drop matters: without it (p = 0) DARE-TIES is TIES at density 1 (hand-computed again), a different merge
    full = merge("dare", experts, base=base, p=0.0, lam=lam, then="ties", weights=weights)
    for k in base:
        expect = base[k] + lam * _hand_ties([e[k] - base[k] for e in experts], weights)
        torch.testing.assert_close(full[k], expect, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(full["lin.weight"], merged["lin.weight"])


# ------------------------------------------------------------------------------------------- analysis
def test_cosine_matrix_of_orthogonal_opposite_and_parallel_vectors():
    """cosine_matrix flattens every float tensor: orthogonal -> 0, opposite -> -1, parallel (any scale) -> 1."""
    def tv(a, b, ids=(0,)):
        return {"x.weight": torch.tensor(a), "x.bias": torch.tensor(b), "pos_ids": torch.tensor(ids)}

    taus = [tv([1.0, 0.0], [0.0]), tv([0.0, 1.0], [0.0], (5,)), tv([-2.0, 0.0], [0.0]), tv([3.0, 0.0], [0.0]),
            tv([1.0, 1.0], [1.0])]
    c = cosine_matrix(taus)
    r3 = 1 / math.sqrt(3)  # [1, 1, 1] against a unit axis
    expect = torch.tensor([[1, 0, -1, 1, r3],
                           [0, 1, 0, 0, r3],
                           [-1, 0, 1, -1, -r3],
                           [1, 0, -1, 1, r3],
                           [r3, r3, -r3, r3, 1]], dtype=torch.float32)
    torch.testing.assert_close(c, expect, atol=1e-6, rtol=0)
    weight_only = cosine_matrix(taus, names=["x.weight"])  # names restrict what is flattened
    assert weight_only[0, 4] == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_sign_conflicts_pools_counts_per_group():
    """sign_conflicts: of entries ≥ 2 trimmed task vectors change, the fraction with both signs, pooled by group."""
    a = {"model.layers.0.mlp.weight": torch.tensor([1.0, -1.0, 2.0, 0.0]),
         "model.layers.0.attn.weight": torch.tensor([1.0, 1.0]),
         "model.layers.1.mlp.weight": torch.tensor([1.0, 1.0, 1.0]),
         "model.embed_tokens.weight": torch.tensor([5.0, 0.0]),
         "model.layers.0.count": torch.tensor([3, 4]),  # integer: skipped
         "model.layers.1.scale": torch.tensor(9.0)}  # 0-dim: skipped
    b = {"model.layers.0.mlp.weight": torch.tensor([1.0, 1.0, 0.0, 3.0]),
         "model.layers.0.attn.weight": torch.tensor([-1.0, -1.0]),
         "model.layers.1.mlp.weight": torch.tensor([2.0, 3.0, 4.0]),
         "model.embed_tokens.weight": torch.tensor([0.0, 5.0]),
         "model.layers.0.count": torch.tensor([3, 4]),
         "model.layers.1.scale": torch.tensor(-9.0)}
    c = {k: torch.zeros_like(v) for k, v in a.items()}
    c["model.layers.0.mlp.weight"] = torch.tensor([0.0, 0.0, 0.0, -1.0])
    taus = [a, b, c]
    per_tensor = sign_conflicts(taus, density=1.0)
    # layer 0 mlp: entry 0 (+,+) agree, 1 (-,+) conflict, 2 only a, 3 (+3,-1) conflict -> 2 of 3 touched
    assert per_tensor["model.layers.0.mlp.weight"] == pytest.approx(2 / 3)
    assert per_tensor["model.layers.0.attn.weight"] == pytest.approx(1.0)
    assert per_tensor["model.layers.1.mlp.weight"] == 0.0
    assert per_tensor["model.embed_tokens.weight"] == 0.0  # never changed by two experts at once
    assert "model.layers.0.count" not in per_tensor and "model.layers.1.scale" not in per_tensor
    grouped = sign_conflicts(taus, density=1.0, group=layer_of)
    # layer 00 pools 3 + 2 touched entries with 2 + 2 conflicts: 4/5 (the mean of the two fractions would be 5/6)
    assert grouped == pytest.approx({"layer 00": 4 / 5, "layer 01": 0.0, "embed_tokens": 0.0})


def test_sign_conflicts_counts_only_entries_kept_by_the_trim():
    """With density < 1 the small entries are trimmed away before counting, so a conflict among them disappears."""
    a = {"w": torch.tensor([10.0, 9.0, 0.1, 0.2])}
    b = {"w": torch.tensor([8.0, -7.0, -0.1, -0.3])}
    assert sign_conflicts([a, b], density=1.0)["w"] == pytest.approx(3 / 4)
    assert sign_conflicts([a, b], density=0.5)["w"] == pytest.approx(1 / 2)  # only entries 0 and 1 survive


@pytest.mark.parametrize("name, group", [
    ("bert.encoder.layer.3.attention.self.query.weight", "layer 03"),
    ("model.layers.12.mlp.up_proj.weight", "layer 12"),
    ("transformer.h.0.attn.c_attn.weight", "layer 00"),
    ("bert.embeddings.word_embeddings.weight", "embeddings"),
    ("bert.pooler.dense.weight", "pooler"),
    ("classifier.weight", "classifier"),
    ("lm_head.weight", "lm_head"),
    ("model.layers.norm.weight", "layers"),  # 'layers' not followed by a number: the top module
])
def test_layer_of_groups_by_block_else_top_module(name, group):
    """layer_of names transformer blocks 'layer NN' (BERT, llama, GPT-2 spellings), else the top module."""
    assert layer_of(name) == group



def test_ties_disjoint_mean_with_a_negative_coefficient_is_the_formula_not_a_blow_up():
    """Σ wᵢτᵢ / Σ wᵢ over the agreeing experts, whatever the sign of the denominator: with w = (1, −2) and τ = (10, 1)
    both agree with s = sgn(10 − 2) = + and the mean is (10 − 2) / (1 − 2) = −8 (a denominator clamped to a tiny
    positive number gave 8e30)."""
    from fusionkit.merging.ops import disjoint_merge

    w = torch.tensor([1.0, -2.0])
    assert torch.equal(disjoint_merge(torch.tensor([[10.0], [1.0]]), w), torch.tensor([-8.0]))
    # and the ordinary cases stay: one agreeing expert gives its τ, none gives 0
    assert torch.equal(disjoint_merge(torch.tensor([[-1.0, 1.0], [3.0, 0.0]]), torch.tensor([1.0, 0.5])),
                       torch.tensor([3.0, 1.0]))
