"""A researcher's own checkpoints as experts (fk.expert_from), read in place; perplexity of a causal LM on text."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import WORDS, tiny_tokenizer as _tokenizer
from fusionkit.core.errors import MergeError, TaskError


def _classifier(path, seed, hidden=32, labels=("negative", "positive"), **save):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    BertForSequenceClassification(config).save_pretrained(path, **save)
    _tokenizer().save_pretrained(path)
    return path


def _causal(path, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    config = GPT2Config(vocab_size=len(WORDS) + 5, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_classifier_folder_is_an_expert_read_in_place(tmp_path):
    import fusionkit as fk
    from fusionkit.core.cache import sha256_file

    folder = _classifier(tmp_path / "checkpoint-500", 0)
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    e = fk.expert_from(folder, task="sentiment")
    assert (e.kind, e.task, e.recipe["labels"], e.head_prefixes) == ("classifier", "sentiment",
                                                                     ["negative", "positive"], ("classifier",))
    model, _ = e.load()
    assert set(e.state_dict()) == set(model.state_dict())
    body, head = e.body_and_head()
    assert set(head) == {"classifier.weight", "classifier.bias"} and all(k.startswith("bert.") for k in body)
    # two folders with one name are two experts (statistics are cached per expert id)
    other = fk.expert_from(_classifier(tmp_path / "b" / "checkpoint-500", 1))
    assert other.id != e.id
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before  # nothing of the user's was touched


def test_a_sharded_checkpoint_reads_as_one_state(tmp_path):
    import fusionkit as fk
    from fusionkit.merging.safetensors_io import lazy_state

    whole = fk.expert_from(_classifier(tmp_path / "whole", 0))
    sharded = fk.expert_from(_classifier(tmp_path / "sharded", 0, max_shard_size="20KB"))
    assert len(sharded.weight_files) > 1
    view = lazy_state([str(p) for p in sharded.weight_files])
    ref = whole.state_dict()
    assert set(view) == set(ref) == set(sharded.state_dict())
    for name, tensor in ref.items():
        assert torch.equal(view[name], tensor) and view.shape(name) == tuple(tensor.shape)


def test_merge_files_streams_sharded_inputs(tmp_path):
    import fusionkit as fk
    from safetensors.torch import load_file

    a = fk.expert_from(_classifier(tmp_path / "a", 0, max_shard_size="20KB"))
    b = fk.expert_from(_classifier(tmp_path / "b", 1))
    out = tmp_path / "merged.safetensors"
    fk.merge_files("average", [[str(p) for p in a.weight_files], [str(p) for p in b.weight_files]], str(out))
    merged, sa, sb = load_file(out), a.state_dict(), b.state_dict()
    for name in sa:
        if sa[name].is_floating_point():
            torch.testing.assert_close(merged[name], (sa[name] + sb[name]) / 2)


def test_checkpoints_of_one_architecture_pass_and_another_names_the_first_mismatch(tmp_path):
    import fusionkit as fk
    from fusionkit.merging.statedict import check_compatible
    from fusionkit.models.experts import check_experts

    a, b = (fk.expert_from(_classifier(tmp_path / n, s)) for n, s in (("a", 0), ("b", 1)))
    check_experts([a, b])
    wide = fk.expert_from(_classifier(tmp_path / "wide", 2, hidden=48))
    with pytest.raises(MergeError, match="different bases.*Cool-Fusion"):  # and where to go instead
        check_experts([a, wide])
    with pytest.raises(MergeError, match="shape"):
        check_compatible([a.state_dict(), wide.state_dict()])


def test_a_retokenised_vocabulary_is_refused_but_saved_settings_are_not(tmp_path):
    import json

    import fusionkit as fk
    from fusionkit.models.experts import check_experts

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    spec = json.loads((b / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 64, "strategy": "LongestFirst", "stride": 0}
    (b / "tokenizer.json").write_text(json.dumps(spec))
    check_experts([fk.expert_from(a), fk.expert_from(b)])  # a training script's saved truncation is no new vocabulary
    spec["model"]["vocab"]["good"], spec["model"]["vocab"]["bad"] = spec["model"]["vocab"]["bad"], \
        spec["model"]["vocab"]["good"]
    (b / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(MergeError, match="different tokenizers.*token alignment"):
        check_experts([fk.expert_from(a), fk.expert_from(b)])


def test_bad_checkpoints_are_one_line_naming_the_fix(tmp_path, monkeypatch):
    import fusionkit as fk

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MergeError, match="no config.json.*save_pretrained"):
        fk.expert_from(empty)
    folder = _classifier(tmp_path / "pickled", 0)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(MergeError, match="pickle.*safe_serialization=True"):
        fk.expert_from(folder)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(MergeError, match="has no model.safetensors"):
        fk.expert_from(folder)
    with pytest.raises(MergeError, match="not a folder"):
        fk.expert_from(tmp_path / "nowhere" / "deeper")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from fusionkit.data.assets import hub_reachable
    hub_reachable.cache_clear()
    with pytest.raises(MergeError, match="could not be had.*go online"):
        fk.expert_from("someone/not-cached-model")
    hub_reachable.cache_clear()


def test_perplexity_is_exp_of_the_token_weighted_nll_and_swaps_params(tmp_path):
    import fusionkit as fk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = fk.expert_from(_causal(tmp_path / "lm-a", 0))
    b = fk.expert_from(_causal(tmp_path / "lm-b", 1))
    assert a.kind == "causal" and a.head_prefixes == () and a.recipe["labels"] is None
    texts = ["the movie was good", "a film", "the plot is very poor and the acting awful"]
    model, tok = AutoModelForCausalLM.from_pretrained(a.path), AutoTokenizer.from_pretrained(a.path)
    res = fk.perplexity(model, tok, texts)
    # the same number from transformers' own loss, text by text, weighted by predicted tokens
    total, n = 0.0, 0
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    assert res["tokens"] == n and math.isclose(res["perplexity"], math.exp(total / n), rel_tol=1e-4)
    swapped = fk.perplexity(model, tok, texts, params=b.state_dict())
    own_b = fk.perplexity(*b.load(), texts)
    assert math.isclose(swapped["perplexity"], own_b["perplexity"], rel_tol=1e-5)
    assert not math.isclose(swapped["perplexity"], res["perplexity"], rel_tol=1e-3)


def test_read_texts_refuses_an_empty_file(tmp_path):
    from fusionkit.models.perplexity import read_texts

    f = tmp_path / "t.txt"
    f.write_text("first text\n\n  \nsecond\n")
    assert read_texts(f) == ["first text", "second"]
    f.write_text("\n \n")
    with pytest.raises(TaskError, match="no non-empty lines"):
        read_texts(f)


def _csv(tmp_path):
    from conftest import toy_frame

    path = tmp_path / "reviews.csv"
    toy_frame(200).to_csv(path, index=False)
    return path


def test_merge_checkpoints_writes_a_loadable_average_and_scores_it_on_the_users_csv(tmp_path):
    import fusionkit as fk
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fusionkit.core.cache import sha256_file
    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    before = sha256_file(a / "model.safetensors")
    csv = _csv(tmp_path)
    report = merge_checkpoints("average", [a, b], tmp_path / "merged", data=csv)
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    sa, sb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name in sa:
        torch.testing.assert_close(merged[name], (sa[name] + sb[name]) / 2)
    assert sha256_file(a / "model.safetensors") == before
    # the reported accuracy is what the saved folder, loaded as a user would, scores on the held-out split
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    task = fk.task_from(csv, label_names=["negative", "positive"])
    plain = fk.evaluate(model, AutoTokenizer.from_pretrained(tmp_path / "merged"), task, splits=("test",))["test"]
    systems = report["scores"]["systems"]
    assert systems["merged"]["accuracy"] == pytest.approx(plain)
    assert systems["merged"]["examples"] == len(task.data["test"])
    d = systems["a"]["merged_minus_this"]
    assert d["lo"] <= d["diff"] <= d["hi"]
    assert d["diff"] == pytest.approx(systems["merged"]["accuracy"] - systems["a"]["accuracy"])


def test_merge_checkpoints_ties_uses_the_base_and_matches_the_in_memory_merge(tmp_path):
    import fusionkit as fk
    from safetensors.torch import load_file

    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b, base = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1), ("base", 2)))
    with pytest.raises(MergeError, match="needs the base model.*--base"):
        merge_checkpoints("ties", [a, b], tmp_path / "nobase")
    merge_checkpoints("ties", [a, b], tmp_path / "ties", base=base, density=0.5)
    states = [load_file(p / "model.safetensors") for p in (a, b, base)]
    expected = fk.merge("ties", states[:2], base=states[2], density=0.5)
    got = load_file(tmp_path / "ties" / "model.safetensors")
    for name, t in expected.items():
        torch.testing.assert_close(got[name], t)


def _backbone(path, seed, hidden=32):
    """The bare pretrained encoder (BertModel, no head) - what a base on the hub usually is."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


def test_a_backbone_without_a_head_is_the_base_of_the_body_and_the_heads_are_averaged(tmp_path):
    import fusionkit as fk
    from safetensors.torch import load_file

    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    base = _backbone(tmp_path / "backbone", 2)
    report = merge_checkpoints("task_arithmetic", [a, b], tmp_path / "ta", base=base, lam=0.5)
    sa, sb, s0 = (load_file(p / "model.safetensors") for p in (a, b, base))
    got = load_file(tmp_path / "ta" / "model.safetensors")
    name = "bert.encoder.layer.1.output.dense.weight"  # the backbone calls it encoder.layer.1.output.dense.weight
    theta0 = s0[name.removeprefix("bert.")]
    torch.testing.assert_close(got[name], theta0 + 0.5 * ((sa[name] - theta0) + (sb[name] - theta0)))
    torch.testing.assert_close(got["classifier.weight"], (sa["classifier.weight"] + sb["classifier.weight"]) / 2)
    assert any("not in the base" in n and "classifier" in n for n in report["notes"])
    narrow = _backbone(tmp_path / "narrow", 2, hidden=16)
    with pytest.raises(MergeError, match="hidden_size is 16.*fine-tuned from"):
        merge_checkpoints("task_arithmetic", [a, b], tmp_path / "bad", base=narrow)
    with pytest.raises(MergeError, match="the base has no parameter"):  # an in-memory merge stays strict
        fk.merge("task_arithmetic", [sa, sb], base={k: v for k, v in sa.items() if "classifier" not in k})


def test_regmean_on_checkpoints_measures_statistics_on_the_data(tmp_path):
    from safetensors.torch import load_file

    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    with pytest.raises(MergeError, match="needs gram statistics.*--data"):
        merge_checkpoints("regmean", [a, b], tmp_path / "r0")
    report = merge_checkpoints("regmean", [a, b], tmp_path / "r", data=_csv(tmp_path))
    assert any("gram statistics" in n for n in report["notes"])
    merge_checkpoints("average", [a, b], tmp_path / "avg")
    r, avg = load_file(tmp_path / "r" / "model.safetensors"), load_file(tmp_path / "avg" / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(r[name], avg[name])  # the Gram matrices changed the linear layers


def test_merged_causal_lms_are_scored_by_perplexity_on_text(tmp_path):
    import fusionkit as fk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b = (_causal(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    txt = tmp_path / "dev.txt"
    txt.write_text("the movie was good\nthe plot is very poor\n\na film and a story\n")
    report = merge_checkpoints("average", [a, b], tmp_path / "lm", data=txt)
    out = tmp_path / "lm"
    plain = fk.perplexity(AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out),
                          ["the movie was good", "the plot is very poor", "a film and a story"])
    assert report["scores"]["metric"] == "perplexity"
    assert report["scores"]["systems"]["merged"]["perplexity"] == pytest.approx(plain["perplexity"], rel=1e-5)


def test_bad_checkpoint_merges_are_one_line(tmp_path):
    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    with pytest.raises(MergeError, match="inside.*new folder"):
        merge_checkpoints("average", [a, b], a / "merged")
    other = _classifier(tmp_path / "topic", 3, labels=("sports", "world"))
    with pytest.raises(MergeError, match="one file of data cannot score them all"):
        merge_checkpoints("average", [a, other], tmp_path / "m", data=_csv(tmp_path))
    lm = _causal(tmp_path / "lm", 0)
    with pytest.raises(MergeError):
        merge_checkpoints("average", [a, lm], tmp_path / "m2")
    with pytest.raises(TaskError, match="CSV"):
        merge_checkpoints("average", [a, b], tmp_path / "m3", data=tmp_path / "notes.txt")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m3").exists()


def test_models_of_different_label_spaces_merge_their_bodies_and_keep_their_heads(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a = _classifier(tmp_path / "reviews", 0)
    topic = _classifier(tmp_path / "topic", 3, labels=("sports", "world", "tech"))
    report = merge_checkpoints("average", [a, topic], tmp_path / "m")
    assert report["folders"] == ["reviews", "topic"] and any("own head" in n for n in report["notes"])
    sa, st = load_file(a / "model.safetensors"), load_file(topic / "model.safetensors")
    for name, src in (("reviews", sa), ("topic", st)):
        got = load_file(tmp_path / "m" / name / "model.safetensors")
        assert set(got) == set(src)
        torch.testing.assert_close(got["classifier.weight"], src["classifier.weight"])  # its own head
        body = "bert.encoder.layer.0.attention.self.query.weight"
        torch.testing.assert_close(got[body], (sa[body] + st[body]) / 2)  # one merged body
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m" / name)
        assert model.config.num_labels == len(src["classifier.bias"])
    assert not (tmp_path / "m" / "body.safetensors").exists()


def test_cli_merges_checkpoints_and_prints_json(tmp_path, capsys):
    import json

    from fusionkit.cli import main

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    code = main(["merge", "average", "--models", str(a), str(b), "--data", str(_csv(tmp_path)),
                 "--out", str(tmp_path / "out"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(tmp_path / "out") and (tmp_path / "out" / "config.json").is_file()
    assert set(report["scores"]["systems"]) == {"merged", "a", "b"}
    assert main(["merge", "average", "--models", str(a), str(b)]) != 0
    assert "--out" in capsys.readouterr().err


def test_eval_all_scores_every_row_of_a_scoring_only_csv(tmp_path):
    """A benchmark's test file: every row is scored (not a tenth of it); statistics on those rows are refused."""
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fusionkit.merging.checkpoint_merge import merge_checkpoints

    a, b = (_classifier(tmp_path / n, s) for n, s in (("a", 0), ("b", 1)))
    csv = _csv(tmp_path)
    report = merge_checkpoints("average", [a, b], tmp_path / "m", data=csv, eval_all=True)
    merged = report["scores"]["systems"]["merged"]
    rows = pd.read_csv(csv)
    assert report["scored_on"] == "every row" and merged["examples"] == len(rows) == 200
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        pred = [int(model(**tok(t, return_tensors="pt")).logits.argmax()) for t in rows["text"]]
    gold = [model.config.label2id[label] for label in rows["label"]]
    assert merged["accuracy"] == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / len(gold))
    with pytest.raises(MergeError, match="measured on the rows it is scored on"):
        merge_checkpoints("regmean", [a, b], tmp_path / "r", data=csv, eval_all=True)
