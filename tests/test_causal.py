"""Causal-LM fusion on tiny random llama models built in code: the text scorer, LM fine-tuning, Gram and Fisher
statistics of a decoder, every registered merge on a causal zoo, and DFWE / Evolver with an LM objective."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import WORDS, tiny_tokenizer


def _llama(path, seed):
    """A 2-layer llama (grouped-query attention, tied embeddings, like SmolLM2) over the toy vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(WORDS) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _domain(name, words, n=60, seed=0):
    """A text domain whose texts draw from a few words in a fixed cycle: learnable in a few steps."""
    import random

    from fusionkit.data.domains import text_task_from

    rng = random.Random(seed)
    texts = []
    for i in range(n):
        start = rng.randrange(len(words))
        texts.append(" ".join(words[(start + j) % len(words)] for j in range(4 + i % 5)) + f" {WORDS[i % 20]}")
    return text_task_from(texts, name=name, seed=seed)


@pytest.fixture
def base(tmp_path):
    return str(_llama(tmp_path / "base", 0))


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path), tiny_tokenizer()


def test_the_text_scorer_is_the_token_weighted_log_likelihood_and_ignores_padding(base):
    import fusionkit as fk
    from fusionkit.models.lm_evaluator import LMEvaluator

    model, tok = _load(base)
    task = _domain("t", WORDS[:8], n=60)  # texts of 6 to 10 tokens: batches of 4 carry padding
    ev = LMEvaluator(model, tok, max_length=32, batch_size=4)
    # by hand, one text at a time (no padding anywhere)
    total, count, per = 0.0, 0, []
    for t in task.data["validation"]["text"]:
        ids = tok(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        s = float(lp.gather(-1, ids[0, 1:, None]).sum())
        total, count = total + s, count + ids.shape[1] - 1
        per.append(s)
    assert ev.score(task, "validation") == pytest.approx(total / count, abs=1e-5)
    per = np.array(per) * len(per) / count  # each text's summed log-likelihood, scaled: their mean is the score
    assert np.allclose(ev.correct(task, "validation"), per, atol=1e-5)
    assert ev.correct(task, "validation").mean() == pytest.approx(total / count, abs=1e-5)
    nll, acc = ev.loss_and_score(task, "validation")
    assert nll == pytest.approx(-total / count, abs=1e-5) and 0 <= acc <= 1
    # perplexity (the checkpoint merge's scorer) is exp of the same NLL
    assert fk.perplexity(model, tok, list(task.data["validation"]["text"]))["perplexity"] == pytest.approx(
        math.exp(nll), rel=1e-4)


def test_the_mixture_of_lms_is_scored_above_their_mean_log_likelihood(base, tmp_path):
    from fusionkit.models.lm_evaluator import LMEvaluator

    model, tok = _load(base)
    other = _load(_llama(tmp_path / "other", 1))[0].state_dict()
    task = _domain("d", WORDS[:5])
    ev = LMEvaluator(model, tok, max_length=32)
    a, b = ev.score(task, "test"), ev.score(task, "test", params=other)
    assert ev.ensemble_score(task, "test", [({}, None)]) == pytest.approx(a, abs=1e-5)
    mixed = ev.ensemble_score(task, "test", [({}, None), (other, None)])
    # by hand: per token, log ½(p_a + p_b), averaged over every predicted token of the split
    second = _load(_llama(tmp_path / "other2", 1))[0]
    total, count = 0.0, 0
    for text in task.data["test"]["text"]:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lps = [torch.log_softmax(m(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
                   for m in (model, second)]
        total += float((torch.logaddexp(*lps) - math.log(2)).sum())
        count += ids.shape[1] - 1
    assert mixed == pytest.approx(total / count, abs=1e-5)
    assert mixed > (a + b) / 2  # Jensen: the log of the mean probability is above the mean log probability


def test_lm_fine_tuning_learns_its_domain_keeps_the_embeddings_and_is_cached(base):
    from fusionkit.core.profiles import get_profile
    from fusionkit.models.lm_evaluator import LMEvaluator
    from fusionkit.models.lm_training import finetune_lm

    domain = _domain("cycle", WORDS[:6])
    profile = get_profile("smoke").with_(max_length=32, epochs=3, batch_size=8, lr=3e-3)
    e = finetune_lm(base, domain, profile, quiet=True, precision="float32")
    assert e.kind == "causal" and e.head_prefixes == () and e.recipe["labels"] is None
    model, tok = _load(base)
    theta0, state = model.state_dict(), e.state_dict()
    emb = "model.embed_tokens.weight"
    assert torch.equal(state[emb], theta0[emb])  # frozen: tied to the LM head
    assert not torch.equal(state["model.layers.0.mlp.up_proj.weight"], theta0["model.layers.0.mlp.up_proj.weight"])
    ev = LMEvaluator(model, tok, max_length=32)
    assert ev.score(domain, "test", params=state) > ev.score(domain, "test") + 0.3
    assert e.scores["test"] == pytest.approx(ev.score(domain, "test", params=state), abs=1e-3)
    again = finetune_lm(base, domain, profile, quiet=True, precision="float32")
    assert again.id == e.id and again.recipe["train_seconds"] == e.recipe["train_seconds"]


def test_decoder_gram_matrices_mask_padding(base):
    from fusionkit.merging.statistics import gram_stats

    model, tok = _load(base)
    task = _domain("d", WORDS[:8], n=30)
    padded = gram_stats(model, tok, task, examples=12, batch_size=6, max_length=32)
    alone = gram_stats(model, tok, task, examples=12, batch_size=1, max_length=32)
    assert "model.layers.1.mlp.down_proj" in padded and padded["model.layers.1.mlp.down_proj"].shape == (64, 64)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"):
        assert torch.allclose(padded[name], alone[name], rtol=1e-4, atol=1e-6), name
    # one block's layers alone (RegMean++ measures block by block): the same matrices, nothing else
    part = gram_stats(model, tok, task, examples=12, batch_size=6, max_length=32, modules={"model.layers.1.mlp.up_proj"})
    assert set(part) == {"model.layers.1.mlp.up_proj"}
    assert torch.equal(part["model.layers.1.mlp.up_proj"], padded["model.layers.1.mlp.up_proj"])


@pytest.mark.parametrize("variant", ["gold", "argmax", "sample"])
def test_causal_fisher_is_the_mean_squared_gradient_of_each_texts_mean_token_log_likelihood(base, variant):
    from fusionkit.merging.statistics import fisher_stats

    model, tok = _load(base)
    task = _domain("d", WORDS[:8], n=30)
    fisher = fisher_stats(model, tok, task, examples=3, variant=variant, max_length=32, seed=0)
    name = "model.layers.0.mlp.gate_proj.weight"
    if variant != "gold":  # the labels are the model's own: check the mass is there, not the draw
        assert float(fisher[name].sum()) > 0 and set(fisher) >= {name}
        return
    rows = task.data["train"].shuffle(seed=0).select(range(3))
    by_hand = torch.zeros_like(fisher[name])
    for text in rows["text"]:
        ids = tok(text, return_tensors="pt")["input_ids"]
        model.zero_grad()
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        lp.gather(-1, ids[0, 1:, None]).mean().backward()
        by_hand += dict(model.named_parameters())[name].grad ** 2
    assert torch.allclose(fisher[name], by_hand / 3, rtol=1e-4, atol=1e-10)


@pytest.fixture
def causal_zoo(base):
    """A 3-expert causal zoo on three toy domains, built with the kit's LM fine-tuning."""
    from fusionkit.core.profiles import get_profile
    from fusionkit.models.lm_training import finetune_lm
    from fusionkit.models.zoo import Zoo

    profile = get_profile("smoke").with_(max_length=32, epochs=2, batch_size=8, lr=3e-3, stats_examples=8,
                                         eval_batch_size=16, search_examples=8)
    tasks = {n: _domain(n, WORDS[i * 6:(i + 1) * 6], seed=i) for i, n in enumerate(("one", "two", "three"))}
    experts = [finetune_lm(base, t, profile, quiet=True, precision="float32") for t in tasks.values()]
    return Zoo("causal-toy", profile, tasks, experts, {e.name: tasks[e.task] for e in experts}, base=base)


def test_the_causal_zoo_scores_each_expert_best_on_its_own_domain(causal_zoo):
    matrix = causal_zoo.matrix()
    for e in causal_zoo.experts:
        own = matrix[e.name][e.task]["test"]
        assert all(own > matrix[o.name][e.task]["test"] for o in causal_zoo.experts if o is not e), matrix


def test_every_registered_merge_runs_on_a_causal_zoo(causal_zoo):
    import fusionkit as fk
    from fusionkit.merging.zoo_merge import merge_zoo, score_merged

    ev = causal_zoo.evaluator()
    names = list(causal_zoo.experts[0].state_dict())
    skip_two = {m for m, spec in fk.METHODS.items() if spec.n_experts == 2}
    for method, spec in fk.METHODS.items():
        experts = [e.name for e in causal_zoo.experts[:2]] if method in skip_two else None
        options = {"steps": 2} if method == "adamerging" else {}
        merged = merge_zoo(method, causal_zoo, experts=experts, evaluator=ev, **options)
        for task in merged.heads:
            state = merged.state_for(task)
            assert set(names) <= set(state), method
            assert all(torch.isfinite(state[n]).all() for n in names if state[n].is_floating_point()), method
        scores = score_merged(merged, causal_zoo, ev)
        served = {e.task for e in causal_zoo.experts if experts is None or e.name in experts}
        assert set(scores) == served and all(-20 < s["test"] < 0 for s in scores.values()), (method, scores)


def test_regmean_on_a_causal_zoo_fits_each_decoder_linear_better_than_the_average(causal_zoo):
    from fusionkit.merging.methods.regmean import regression_loss
    from fusionkit.merging.statistics import expert_stats
    from fusionkit.merging.zoo_merge import merge_zoo

    zoo = causal_zoo
    grams = [expert_stats(e, "gram", zoo.train_tasks[e.name], examples=zoo.profile.stats_examples,
                          max_length=zoo.profile.max_length, seed=0) for e in zoo.experts]
    states = [e.state_dict() for e in zoo.experts]
    reg, avg = merge_zoo("regmean", zoo, seed=0), merge_zoo("average", zoo)
    for layer in ("model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"):
        w = [s[layer + ".weight"] for s in states]
        g = [gr[layer] for gr in grams]
        assert regression_loss(reg.body[layer + ".weight"], w, g) < regression_loss(avg.body[layer + ".weight"], w, g)


def test_dfwe_and_evolver_search_a_causal_zoo_on_dev_log_likelihood(causal_zoo):
    from fusionkit.search.dfwe import dfwe
    from fusionkit.search.evolver import evolve

    zoo = causal_zoo
    res = dfwe(zoo.experts, zoo.tasks, "OnePlusOne", budget=6, max_length=32, dev_examples=8, quiet=True)
    start = res.history[0]["dev"]  # the uniform average, evaluated first
    assert res.best["dev"] >= start and all(h["dev"] < 0 for h in res.history)
    scored = res.scorer(res.best_state())  # the scorer's number is the mean dev log-likelihood per token
    assert scored == pytest.approx(res.best["dev"], abs=1e-5)
    evo = evolve(zoo.experts, zoo.tasks, "average", generations=2, max_length=32, dev_examples=8, quiet=True, seed=0)
    devs = [h["dev"] for h in evo.history]
    assert all(b >= a - 1e-9 for a, b in zip(devs, devs[1:]))  # the merged population's dev score never falls


def test_a_causal_checkpoint_merge_with_regmean_reads_a_text_file_and_scores_held_out_lines(tmp_path):
    import fusionkit as fk
    from fusionkit.merging.checkpoint_merge import merge_checkpoints
    from fusionkit.merging.stats_files import measure_to_file

    a, b = (_llama(tmp_path / n, s) for n, s in (("a", 1), ("b", 2)))
    txt = tmp_path / "dev.txt"
    txt.write_text("\n".join(_domain("d", WORDS[:10], n=40).data["train"]["text"]))
    report = merge_checkpoints("regmean", [a, b], tmp_path / "m", data=txt)
    assert report["kind"] == "causal" and report["scores"]["metric"] == "perplexity"
    assert any("held-out tenth" in n for n in report["notes"])
    # statistics published as files give the identical merge
    for name, path in (("a", a), ("b", b)):
        measure_to_file("gram", path, txt, tmp_path / f"{name}.st")
    again = merge_checkpoints("regmean", [a, b], tmp_path / "m2", stats_files=[tmp_path / "a.st", tmp_path / "b.st"])
    one, two = fk.expert_from(tmp_path / "m"), fk.expert_from(tmp_path / "m2")
    assert again["kind"] == "causal"
    s1, s2 = one.state_dict(), two.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_a_text_task_refuses_too_little_text_and_a_csv_for_a_causal_lm(tmp_path):
    import fusionkit as fk
    from fusionkit.core.errors import TaskError
    from fusionkit.data.domains import load_domain, text_task_from
    from fusionkit.models.checkpoints import checkpoint_task

    with pytest.raises(TaskError, match="at least 10"):
        text_task_from(["one text", "two"])
    with pytest.raises(TaskError, match="unknown text domain"):
        load_domain("poems")
    ck = fk.expert_from(_llama(tmp_path / "lm", 0))
    (tmp_path / "d.csv").write_text("text,label\na,b\n")
    with pytest.raises(TaskError, match="pass a .txt"):
        checkpoint_task(ck, tmp_path / "d.csv")


def test_a_causal_zoo_merge_is_reported_in_log_likelihoods_and_saves_one_loadable_lm(causal_zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    from fusionkit.merging.export import save_merged
    from fusionkit.merging.zoo_merge import merge_report
    from fusionkit.models.lm_evaluator import LMEvaluator

    merged, report = merge_report("ties", causal_zoo)
    assert report["metric"] == "log_likelihood" and set(report["chance"].values()) == {None}
    assert report["ensemble"] is not None and report["multitask"] is None  # one vocabulary: the LM mixture
    out = save_merged(merged, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not any(p.is_dir() for p in out.iterdir())
    ev = LMEvaluator(AutoModelForCausalLM.from_pretrained(out), tiny_tokenizer(), max_length=32)
    for t, task in causal_zoo.tasks.items():  # the saved folder is the merge that was scored
        assert ev.score(task, "test") == pytest.approx(report["results"][t]["test"], abs=1e-3)


def test_ensemble_distillation_refuses_a_zoo_of_language_models_in_one_line(causal_zoo):
    from fusionkit.core.errors import FusionkitError
    from fusionkit.distill.ensemble import distill_zoo

    with pytest.raises(FusionkitError, match="holds language models.*fix: fuse LMs by merging"):
        distill_zoo(causal_zoo, steps=1)


def test_the_command_line_refuses_to_distil_the_causal_zoo_before_building_it(monkeypatch, capsys):
    from fusionkit.cli import main
    from fusionkit.models import zoo

    def never(*args, **kwargs):
        raise AssertionError("the zoo was built before the refusal")
    monkeypatch.setattr(zoo, "build_zoo", never)
    assert main(["distill-zoo", "--zoo", "causal"]) == 2
    assert "holds language models" in capsys.readouterr().err


def test_the_search_reports_run_on_a_causal_zoo_with_their_baselines(causal_zoo):
    from fusionkit.search.dfwe import dfwe_report
    from fusionkit.search.evolver import evolve_report

    merged, report = dfwe_report(causal_zoo, "OnePlusOne", 6, quiet=True, dev_examples=8)
    assert set(report["best"]["test"]) == set(causal_zoo.tasks)
    labels = " | ".join(report["baselines"])
    assert "uniform average" in labels and "greedy soup" in labels and "random search" in labels, labels
    assert all(v < 0 for v in report["best"]["test"].values())  # log-likelihoods per token
    _, evo = evolve_report(causal_zoo, "average", generations=1, quiet=True)
    assert evo["evaluations"] >= 1 and set(evo["best"]["test"]) == set(causal_zoo.tasks)
