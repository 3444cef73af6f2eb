"""RegMean++ on the tiny zoo: block l is RegMean's closed form on Gram matrices measured through the merged
blocks below it - rebuilt here by hand for one block - and so differs from RegMean, which measures through each
expert's own lower layers."""
import torch

from fusionkit.merging.merge import merge
from fusionkit.merging.statistics import gram_stats
from fusionkit.merging.zoo_merge import merge_zoo, score_merged
from fusionkit.models.heads import split_head


def test_each_block_is_regmean_on_inputs_through_the_merged_blocks_below(tiny_zoo):
    plus = merge_zoo("regmean_plus", tiny_zoo)
    assert [t["block"] for t in plus.trace][:2] == ["embeddings", "bert.encoder.layer.0"]
    layer1 = [n for n in plus.body if n.startswith("bert.encoder.layer.1.")]
    below = {n: v for n, v in plus.body.items() if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    model, tokenizer = tiny_zoo.experts[0].load()
    grams = []
    for e in tiny_zoo.experts:
        body, _ = e.body_and_head()
        model.load_state_dict({**body, **below}, strict=False)
        g = gram_stats(model, tokenizer, tiny_zoo.train_tasks[e.name], examples=tiny_zoo.profile.stats_examples,
                       max_length=tiny_zoo.profile.max_length, seed=0)
        grams.append({k: v for k, v in g.items() if k.startswith("bert.encoder.layer.1.")})
    by_hand = merge("regmean", [{n: e.body_and_head()[0][n] for n in layer1} for e in tiny_zoo.experts],
                    stats=grams, names=layer1)
    for n in layer1:
        torch.testing.assert_close(plus.body[n], by_hand[n], rtol=1e-4, atol=1e-5)
    plain = merge_zoo("regmean", tiny_zoo)  # measured through each expert's own lower layers: another merge
    name = "bert.encoder.layer.1.attention.self.query.weight"
    assert not torch.allclose(plus.body[name], plain.body[name], atol=1e-6)
    first = "bert.encoder.layer.0.attention.self.query.weight"  # block 0's inputs: the averaged embeddings
    assert not torch.allclose(plus.body[first], plain.body[first], atol=1e-6)
    scores = score_merged(plus, tiny_zoo, tiny_zoo.evaluator(), splits=("validation",))
    assert set(scores) == {"two", "three"} and all(0 <= s["validation"] <= 1 for s in scores.values())
    assert split_head(plus.body, ("classifier",))[1] == {}  # bodies merged, heads kept per task
