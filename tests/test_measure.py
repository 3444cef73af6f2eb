import torch

from fusionkit.data.assets import load_base
from fusionkit.merging.statistics import fisher_stats, gram_stats


def test_gram_is_the_mean_outer_product_of_real_tokens_only(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    grams = gram_stats(model, tok, toy_task, examples=12, max_length=16, batch_size=5)
    assert "bert.encoder.layer.0.attention.self.query" in grams and "classifier" in grams
    # recompute the first layer's query input by hand, one example at a time (no padding at all)
    data = toy_task.data["train"].shuffle(seed=0).select(range(12))
    xs = []
    captured = {}
    h = model.bert.encoder.layer[0].attention.self.query.register_forward_pre_hook(
        lambda m, a: captured.__setitem__("x", a[0][0]))
    with torch.no_grad():
        for text in data["text"]:
            model(**tok(text, return_tensors="pt"))
            xs.append(captured["x"])
    h.remove()
    x = torch.cat(xs).double()
    expect = (x.T @ x / x.shape[0]).float()
    torch.testing.assert_close(grams["bert.encoder.layer.0.attention.self.query"], expect, atol=1e-5, rtol=1e-4)


def test_fisher_gold_is_mean_of_per_example_squared_gradients(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    f = fisher_stats(model, tok, toy_task, examples=4, variant="gold", max_length=16)
    data = toy_task.data["train"].shuffle(seed=0).select(range(4))
    acc = torch.zeros_like(model.classifier.weight, dtype=torch.float64)
    for row in data:
        model.zero_grad()
        lp = torch.log_softmax(model(**tok(row["text"], return_tensors="pt")).logits[0], -1)
        lp[row["label"]].backward()
        acc += model.classifier.weight.grad.double() ** 2
    torch.testing.assert_close(f["classifier.weight"], (acc / 4).float())
    assert all((v >= 0).all() for v in f.values())
    # the squared batch-mean gradient (the reference's shortcut) is smaller: Jensen
    model.zero_grad()
    batch = tok(list(data["text"]), padding=True, return_tensors="pt")
    lp = torch.log_softmax(model(**batch).logits, -1)
    lp[torch.arange(4), torch.tensor(data["label"])].mean().backward()
    assert float((model.classifier.weight.grad ** 2).sum()) < float(f["classifier.weight"].sum())


def test_fisher_variants_differ_and_are_seeded(tiny_bert, toy_task):
    model, tok = load_base(tiny_bert, labels=toy_task.label_names)
    a = fisher_stats(model, tok, toy_task, examples=6, variant="sample", seed=0, max_length=16)
    b = fisher_stats(model, tok, toy_task, examples=6, variant="sample", seed=0, max_length=16)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = fisher_stats(model, tok, toy_task, examples=6, variant="argmax", max_length=16)
    assert set(c) == set(a)
