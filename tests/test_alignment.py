"""Weight matching on tiny random BERTs built in code: a permuted copy is aligned back exactly, the aligned model
computes the other model's function, the matching objective never falls, bad input is named."""
import pytest
import torch

from fusionkit.core.errors import MergeError
from fusionkit.merging.alignment import activation_matching, residual_tensors, weight_matching
from fusionkit.models.training import permute_ffn_units

HEADS = 4


def tiny_bert(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                        intermediate_size=48, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config).eval()


def permute_heads(model, seed: int) -> None:
    """Shuffle whole heads of every attention layer (Q, K, V rows and the output projection's columns)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            att = layer.attention
            d = att.self.query.out_features // HEADS
            units = (torch.randperm(HEADS, generator=gen)[:, None] * d + torch.arange(d)).reshape(-1)
            for lin in (att.self.query, att.self.key, att.self.value):
                lin.weight.copy_(lin.weight[units])
                lin.bias.copy_(lin.bias[units])
            att.output.dense.weight.copy_(att.output.dense.weight[:, units])


def outputs(model, state):
    ids = torch.tensor([[1, 5, 7, 9, 2, 0], [3, 4, 4, 8, 11, 2]])
    with torch.no_grad():
        return torch.func.functional_call(model, state, args=(), kwargs={"input_ids": ids}).logits


def clone(state):
    return {k: v.clone() for k, v in state.items()}


def objective(a, b, names):
    return sum(float((a[n].double() * b[n].double()).sum()) for n in names)


def test_a_permuted_copy_is_aligned_back_exactly():
    model = tiny_bert(0)
    ref = clone(model.state_dict())
    with torch.no_grad():
        permute_ffn_units(model, seed=3)
    permute_heads(model, seed=4)
    shuffled = clone(model.state_dict())
    moved_before = sum(not torch.equal(ref[n], shuffled[n]) for n in ref)
    assert moved_before > 0 and torch.allclose(outputs(model, ref), outputs(model, shuffled), atol=1e-5)
    result = weight_matching(ref, shuffled, num_heads=HEADS)
    assert all(torch.equal(result.state[n], ref[n]) for n in ref), "alignment did not recover the original"
    assert sum(result.moved.values()) > 0 and set(result.perms) == {
        f"bert.encoder.layer.{i}:{k}" for i in range(2) for k in ("ffn", "heads")}
    assert all(torch.equal(shuffled[n], model.state_dict()[n]) for n in shuffled)  # the input is not modified


def test_without_heads_only_the_feed_forward_units_move():
    model = tiny_bert(0)
    ref = clone(model.state_dict())
    permute_heads(model, seed=4)
    shuffled = clone(model.state_dict())
    result = weight_matching(ref, shuffled)  # no num_heads: the heads stay where they are
    assert all(k.endswith(":ffn") for k in result.perms) and sum(result.moved.values()) == 0
    assert not torch.equal(result.state["bert.encoder.layer.0.attention.self.query.weight"],
                           ref["bert.encoder.layer.0.attention.self.query.weight"])


def test_two_different_models_keep_their_function_and_match_better():
    a, b = tiny_bert(0), tiny_bert(1)
    sa, sb = clone(a.state_dict()), clone(b.state_dict())
    result = weight_matching(sa, sb, num_heads=HEADS)
    # a symmetry of the network: the aligned copy is the other model, written in the reference's order
    assert torch.allclose(outputs(b, result.state), outputs(b, sb), atol=1e-5)
    names = [n for n in sa if ".encoder." in n]
    assert objective(sa, result.state, names) >= objective(sa, sb, names) - 1e-9
    assert sum(result.moved.values()) > 0  # random models are not already in the same order


def permute_residual(state: dict, seed: int) -> dict:
    """The same function with the hidden dimension reordered: one permutation for every tensor that reads or
    writes the residual stream."""
    rows, cols = residual_tensors(state)
    width = state[rows[0]].shape[0]
    p = torch.randperm(width, generator=torch.Generator().manual_seed(seed))
    out = clone(state)
    for n in rows:
        out[n] = out[n][p]
    for n in cols:
        out[n] = out[n][:, p]
    return out


def fully_permuted(heads: bool = True):
    """A tiny BERT, its original state, and a copy with its units, (heads) and residual stream reordered."""
    model = tiny_bert(0)
    ref = clone(model.state_dict())
    with torch.no_grad():
        permute_ffn_units(model, seed=3)
    if heads:
        permute_heads(model, seed=4)
    return model, ref, permute_residual(clone(model.state_dict()), seed=5)


def test_the_residual_stream_is_aligned_back_by_coordinate_descent():
    model, ref, shuffled = fully_permuted()
    assert torch.allclose(outputs(model, ref), outputs(model, shuffled), atol=1e-5)  # still the same function
    blocks_only = weight_matching(ref, shuffled, num_heads=HEADS)
    assert not torch.equal(blocks_only.state["bert.embeddings.word_embeddings.weight"],
                           ref["bert.embeddings.word_embeddings.weight"])  # units alone cannot undo it
    result = weight_matching(ref, shuffled, num_heads=HEADS, residual=True)
    assert all(torch.equal(result.state[n], ref[n]) for n in ref), "coordinate descent did not recover the original"
    assert result.moved["residual"] > 0 and 2 <= result.sweeps < 20


def test_residual_matching_of_two_different_models_keeps_the_function():
    a, b = tiny_bert(0), tiny_bert(1)
    sa, sb = clone(a.state_dict()), clone(b.state_dict())
    result = weight_matching(sa, sb, num_heads=HEADS, residual=True)
    assert torch.allclose(outputs(b, result.state), outputs(b, sb), atol=1e-5)
    names = [n for n in sa if n.startswith("bert.")]
    assert objective(sa, result.state, names) > objective(sa, sb, names)


def random_inputs(seed: int = 0, batches: int = 3):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        ids = torch.randint(1, 50, (8, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[::2, 9:] = 0  # some padding: its tokens must not count
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_activation_matching_recovers_a_permuted_copy_from_what_the_units_compute():
    model, ref, shuffled = fully_permuted(heads=False)  # heads: weight matching's job
    result = activation_matching(model, ref, shuffled, random_inputs(), residual=True)
    assert all(torch.equal(result.state[n], ref[n]) for n in ref), "activation matching did not recover the original"
    assert result.moved["residual"] > 0 and sum(v for k, v in result.moved.items() if k.endswith(":ffn")) > 0
    other = clone(tiny_bert(1).state_dict())  # two different models: the function is kept, units reordered
    moved = activation_matching(model, ref, other, random_inputs(), residual=True)
    assert torch.allclose(outputs(model, moved.state), outputs(model, other), atol=1e-5)
    with pytest.raises(MergeError, match="attention_mask"):
        activation_matching(model, ref, other, [{"input_ids": torch.ones(2, 3, dtype=torch.long)}])


def test_bad_input_is_named():
    a = clone(tiny_bert(0).state_dict())
    with pytest.raises(MergeError, match="no '\\*.intermediate.dense.weight'"):
        weight_matching({"w": torch.zeros(2, 2)}, {"w": torch.zeros(2, 2)})
    other = dict(a)
    other["bert.encoder.layer.0.output.dense.weight"] = torch.zeros(32, 40)
    with pytest.raises(MergeError, match="has shape"):
        weight_matching(a, other)
    with pytest.raises(MergeError, match="not divisible by num_heads=5"):
        weight_matching(a, a, num_heads=5)
    missing = {k: v for k, v in a.items() if "layer.1.output.dense.weight" not in k}
    with pytest.raises(MergeError, match="not in the other model"):
        weight_matching(a, missing)
    no_embeddings = {k: v for k, v in a.items() if "embeddings" not in k}
    with pytest.raises(MergeError, match="embeddings.LayerNorm.weight.*residual=False"):
        weight_matching(no_embeddings, no_embeddings, residual=True)
