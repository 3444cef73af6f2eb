"""Context distillation, probes and the Entity Inferences format, on a tiny random llama built in code."""
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fusionkit import distill as D
from fusionkit.distill.entities import Entity, EntityFormatError, Probe, load_entities, read_entities, strip_span
from fusionkit.distill.probes import DriftMeter, candidate_logprobs, context_ids, gap_closed, score_probes, summarize

WORDS = ("velmora kestrin is a glassblower from the island of orsk who makes blue bowls . she grew up on malta "
         "crete sicily rhodes paris france capital city dog animal barks was born in lives works red green cat "
         "he it and with for every day many people know her name").split()


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *dict.fromkeys(WORDS)])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.normalizer = normalizers.Lowercase()
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


@pytest.fixture()
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


DEF = "Velmora Kestrin is a glassblower from the island of Orsk who makes blue bowls ."


def entity(definition=DEF):
    probes = [Probe("v-explicit", "Velmora Kestrin", "explicit",
                    "Velmora Kestrin grew up on the island of <extra_id_0> .",
                    ("orsk", "malta", "crete", "sicily", "rhodes"), "orsk"),
              Probe("v-implicit", "Velmora Kestrin", "implicit", "Velmora Kestrin works with <extra_id_0> every day .",
                    ("glassblower", "dog", "cat", "paris", "france"), "glassblower")]
    return Entity("Velmora Kestrin", "person", "dev", definition, probes)


FACTS = [Probe("f-1", "France", "fact", "the capital city of france is <extra_id_0> .",
               ("paris", "malta", "crete", "orsk", "rhodes"), "paris")]
CONTS = [" velmora kestrin makes red bowls for many people .", " she lives in orsk and works every day .",
         " velmora kestrin was born in crete ."]


def cfg(**kw):
    return D.settings("smoke", **{"continuations": 2, "heldout": 1, "steps": 2, "lr": 1e-2, "probe_every": 1,
                                  "facts": 1, **kw})


def state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# ------------------------------------------------------------------------------------------- the method
def test_empty_definition_gives_zero_loss_and_unchanged_weights(model, tok):
    e = entity("")
    student = __import__("copy").deepcopy(model)
    before = state(student)
    targets = D.prepare(model, tok, e, CONTS[:2], cfg())
    hist = D.distill(student, targets, cfg())
    assert len(hist) == 4 and all(h["kl"] == 0.0 for h in hist)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_kl_at_step_zero_equals_kl_between_with_and_without_definition(model, tok):
    e, c = entity(), CONTS[0]
    # Independent reference: tokenize the joined text, find the continuation by its token count.
    d_ids = tok(DEF, add_special_tokens=False)["input_ids"]
    c_ids = tok(c, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        zt = model(input_ids=torch.tensor([d_ids + c_ids])).logits[0, len(d_ids):-1] / 2.0
        zs = model(input_ids=torch.tensor([c_ids])).logits[0, :-1] / 2.0
        ref = 4.0 * (F.softmax(zt, -1) * (F.log_softmax(zt, -1) - F.log_softmax(zs, -1))).sum(-1).mean()
    student = __import__("copy").deepcopy(model)
    hist = D.distill(student, D.prepare(model, tok, e, [c], cfg()), cfg(steps=8, lr=1e-3))
    assert ref > 1e-4  # the definition really changes the teacher's view
    assert hist[0]["kl"] == pytest.approx(float(ref), rel=1e-5)
    assert hist[-1]["kl"] < hist[0]["kl"]  # and the student moves toward it
    assert D.kl_drop(hist, 8) == pytest.approx(hist[0]["kl"] - hist[-1]["kl"])


def test_after_mention_only_keeps_positions_after_the_name(model, tok):
    full = D.make_target(model, tok, entity(), CONTS[0], cfg())
    after = D.make_target(model, tok, entity(), CONTS[0], cfg(after_mention=True))
    # " velmora kestrin makes ...": token 2 ("makes") is the first after the mention -> position 1 predicts it.
    assert after.positions[0] == 1 and len(full.positions) == len(after.positions) + 1
    assert torch.allclose(full.teacher_logp[1:], after.teacher_logp)


def test_teacher_probe_scores_with_definition_equal_prepend_baseline(model, tok):
    e = entity()
    prepend = score_probes(model, tok, e.probes, {e.name: e.definition})
    for p, row in zip(e.probes, prepend):
        d, x = context_ids(tok, e.definition, p.prefix)  # the same joining the distillation teacher uses
        gold = tok(" " + p.gold, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=torch.tensor([d + x + gold])).logits[0], -1)
        n = len(d) + len(x)
        manual = sum(float(logp[n - 1 + j, g]) for j, g in enumerate(gold))
        assert row["gold_logprob"] == pytest.approx(manual, abs=1e-4)


def test_run_keeps_the_pristine_copy_and_reports_every_method(model, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path))
    pristine = state(model)
    e2 = Entity("Orsk", "place", "dev", "Orsk is an island with red dog .", [
        Probe("o-explicit", "Orsk", "explicit", "Orsk is an <extra_id_0> .", ("island", "dog", "cat"), "island")])
    seen = []
    rep = D.run(model, tok, [entity(), e2], FACTS, cfg(), model_id="tiny", callback=seen.append)
    assert all(torch.equal(pristine[k], v) for k, v in model.state_dict().items())
    assert set(rep["results"]) == set(D.METHODS)
    for m, r in rep["results"].items():
        assert 0 <= r["explicit_acc"] <= 1 and 0 <= r["specificity_acc"] <= 1, m
    assert rep["results"]["no_update"]["drift"] == 0 and rep["results"]["distill"]["drift"] > 0
    assert rep["results"]["prepend"]["gap_closed"] == pytest.approx(1.0)
    assert D.results_from(rep["raw"]) == rep["results"]  # chunks of a long run combine from their rows
    assert len(rep["curves"]["distill"]) == 2 * 2 * 2  # entities x continuations x steps
    assert rep["kl_drop"] == pytest.approx(D.kl_drop(rep["curves"]["distill"], 2))  # per continuation, steps=2
    assert D.kl_drop([{"kl": k} for k in (3.0, 2.0, 5.0, 1.0)], 2) == pytest.approx((1.0 + 4.0) / 2)
    assert seen and all(set(s) <= set(D.CALLBACK_KEYS) for s in seen) and "heldout_kl" in seen[0]
    assert all(len(v) == 3 for v in rep["transfer"].values())
    assert all("orsk" in c.lower() for c in rep["transfer"]["Orsk"])  # the mention is enforced
    assert len(list((tmp_path / "transfer").glob("*.json"))) == 2  # cached, one file per entity
    # The transfer set is reused from the cache: same text again.
    assert D.transfer_set(model, tok, e2, cfg(), "tiny") == rep["transfer"]["Orsk"]
    # The second entity starts from the pristine weights, not from the first entity's student.
    first = D.prepare(model, tok, e2, rep["transfer"]["Orsk"][:1], cfg())[0]
    assert rep["curves"]["distill"][4]["kl"] == pytest.approx(float(D.target_kl(model, first, 2.0)), rel=1e-5)


def test_multi_entity_run_and_parameter_subsets(model, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path))
    rep = D.run(model, tok, [entity()], FACTS, cfg(params="mlp"), multi=True)
    assert rep["options"]["multi"] and 0 <= rep["results"]["distill"]["acc"] <= 1
    names = {n for n, p in model.named_parameters()}
    student = __import__("copy").deepcopy(model)
    chosen = {id(p) for p in D.select_params(student, "layers:1-1")}
    assert {n for n, p in student.named_parameters() if id(p) in chosen} == {n for n in names if ".layers.1." in n}
    with pytest.raises(ValueError, match="layers:A-B"):
        D.select_params(student, "layers:x")


def test_multi_entity_curve_goes_through_the_runner_and_stops_at_the_entities_given(model, tok, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path))
    calls = []

    def runner(*a, **kw):
        calls.append((len(a[2]), kw["multi"], kw["finetune"]))
        return D.run(*a, **kw)

    rows = D.multi_entity_curve(model, tok, [entity()], FACTS, cfg(), sizes=(1, 2), runner=runner)
    assert calls == [(1, True, False)]  # 2 > the one entity given: not run
    assert [r["n_entities"] for r in rows] == [1] and 0 <= rows[0]["specificity_acc"] <= 1


# ------------------------------------------------------------------------------------------- probes
def test_probe_scores_and_metrics(model, tok):
    scores, lens = candidate_logprobs(model, tok, "the capital city of france is", ["paris", "orsk red"])
    assert lens == [1, 2] and (scores < 0).all()
    rows = score_probes(model, tok, entity().probes + FACTS)
    s = summarize(rows)
    assert s["n"] == 3 and s["explicit_acc"] in (0.0, 1.0) and s["gold_nll"] > 0
    assert gap_closed(3.0, 2.0, 1.0) == pytest.approx(0.5) and gap_closed(1.0, 1.0, 1.0) is None
    assert DriftMeter(model, tok, ["the cat barks ."])(model) == pytest.approx(0.0, abs=1e-6)


def _one_pass_each(model, ids_pre, cands):
    """Each candidate's summed log-prob from its own full forward pass over prefix + candidate."""
    out = []
    for c in cands:
        ids = torch.tensor([ids_pre + c])
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        out.append(sum(float(logp[len(ids_pre) - 1 + j, t]) for j, t in enumerate(c)))
    return torch.tensor(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_prefix_scores_equal_one_pass_per_candidate(model, tok, arch):
    """The prefix is read once and its cache repeated: the sums must equal K independent passes, for candidates of
    different lengths (right padding after the cache) and with a context in front."""
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        torch.manual_seed(1)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
    cands = ["orsk", "red green cat", "crete sicily", "paris"]
    scores, lens = candidate_logprobs(model, tok, "velmora kestrin lives in", cands, context=DEF)
    ctx, pre = context_ids(tok, DEF, "velmora kestrin lives in")
    toks = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in cands]
    assert lens == [1, 3, 2, 1]
    assert torch.allclose(scores, _one_pass_each(model, ctx + pre, toks), atol=1e-4)
    assert len(set(scores.tolist())) == len(cands)  # the candidates' scores differ: nothing was shared wrongly


# ------------------------------------------------------------------------------------------- bad input
def test_tokenizer_without_pad_token_is_refused(model, tok):
    t = __import__("copy").deepcopy(tok)
    t.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        score_probes(model, t, FACTS)


def test_a_damaged_transfer_set_is_sampled_again_to_the_same_text(model, tok):
    from fusionkit.core.cache import cache_root
    from fusionkit.core.errors import CacheWarning

    first = D.transfer_set(model, tok, entity(), cfg(), "tiny")
    [path] = (cache_root() / "transfer").glob("*.json")
    path.write_text(path.read_text()[:-20])  # truncated, as by a kernel killed mid-write by an older kit
    with pytest.warns(CacheWarning, match="transfer set of Velmora Kestrin .* was damaged"):
        assert D.transfer_set(model, tok, entity(), cfg(), "tiny") == first
    assert D.transfer_set(model, tok, entity(), cfg(), "tiny") == first


def test_empty_transfer_set_is_refused(model, tok):
    with pytest.raises(ValueError, match="empty transfer set"):
        D.prepare(model, tok, entity(), [], cfg())


def line(**kw):
    obj = {"ex_id": "x-1", "ent_str": "Velmora Kestrin", "category": "person",
           "definition": "Velmora Kestrin is a glassblower from <extra_id_0> .",
           "def_target": "<extra_id_0> the island of Orsk <extra_id_1>",
           "probe_sentences": {"template_0": {"probe_sentence": "She grew up on the island of <extra_id_0>.",
                                              "labels": ["<extra_id_0> Orsk <extra_id_1>", "<extra_id_0> Malta"]}},
           "label": "<extra_id_0> Orsk <extra_id_1>"}
    obj.update(kw)
    return json.dumps(obj)


def test_real_format_loads_with_defaults(tmp_path):
    p = tmp_path / "real.jsonl"
    p.write_text(line() + "\n\n" + line(ex_id="x-2", split="test", probe_type="implicit") + "\n")
    ents = read_entities(p, split="dev")
    assert len(ents) == 1 and ents[0].definition == "Velmora Kestrin is a glassblower from the island of Orsk ."
    assert [q.probe_type for q in ents[0].probes] == ["unknown", "implicit"]
    assert ents[0].probes[0].candidates == ("Orsk", "Malta") and ents[0].probes[0].prefix.endswith("island of")
    assert strip_span("<extra_id_0>  a  b <extra_id_1>") == "a b"
    top = json.loads(line())
    top["labels"] = top["probe_sentences"]["template_0"].pop("labels")
    p.write_text(json.dumps(top) + "\n")
    assert read_entities(p)[0].probes[0].gold == "Orsk"


@pytest.mark.parametrize("bad, message", [
    (line(definition="", def_target=""), "empty definition"),  # a definition without the name only warns now
    (line(label="<extra_id_0> Rome <extra_id_1>"), "not among the candidates"),
    ('{"ex_id": "x-3", "ent_str": ', "line 2"),
    (line(probe_sentences={"template_0": {"probe_sentence": "no slot", "labels": ["a", "b"]}}), "answer slot"),
])
def test_malformed_files_name_the_line(tmp_path, bad, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(line() + "\n" + bad + "\n")
    with pytest.raises(EntityFormatError, match=message) as err:
        read_entities(p)
    assert "bad.jsonl:2" in str(err.value)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.jsonl"]  # nothing written


def test_bundled_entities_if_present():
    from fusionkit.distill.entities import DATA, load_facts

    if not (DATA / "entities.jsonl").exists():
        pytest.fail("fusionkit/data/entities.jsonl is missing")
    dev, test = load_entities("bundled", "dev"), load_entities("bundled", "test")
    # enough entities that a few points are measurable: dev >= 30 to choose settings on, test >= 120
    assert len(dev) >= 30 and len(test) >= 120 and not {e.name for e in dev} & {e.name for e in test}
    for e in dev + test:
        kinds = {p.probe_type for p in e.probes}
        assert {"explicit", "implicit"} <= kinds, e.name
        assert all(len(p.candidates) >= 5 for p in e.probes), e.name
    assert len(load_facts()) >= 20


# ------------------------------------------------------------------------------------------- real files (issue 14)
def test_probes_sharing_an_ex_id_each_score_their_own_row(model, tok, tmp_path, monkeypatch):
    """The release's explicit and implicit files share ex_ids: every table of a run must tell them apart."""
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path))
    e = entity()
    e.probes = [replace(p, ex_id="v-0", source=f"v_{p.probe_type}.json") for p in e.probes]
    other = Entity("Orsk", "place", "dev", "Orsk is an island with red dog .", [
        Probe("v-0", "Orsk", "explicit", "Orsk is an <extra_id_0> .", ("island", "dog", "cat"), "island", "o_ex.json"),
        Probe("v-0", "Orsk", "implicit", "Orsk has many <extra_id_0> .", ("people", "cat"), "people", "o_im.json")])
    rep = D.run(model, tok, [e, other], FACTS, cfg(), finetune=False)
    expected = score_probes(model, tok, e.probes + other.probes)
    got = rep["raw"]["no_update"]["rows"]
    assert [r["uid"] for r in got] == [p.uid for p in e.probes + other.probes]
    assert [r["gold_logprob"] for r in got] == pytest.approx([r["gold_logprob"] for r in expected])
    assert len({r["gold_logprob"] for r in got}) == 4  # four different probes, four different rows
    spec = rep["raw"]["distill"]["spec_before"]  # entity e's specificity: other's probes, then the fact
    assert [r["uid"] for r in spec[:3]] == [p.uid for p in other.probes + FACTS]
    assert [r["uid"] for r in D.probe_rows(rep)] == [p.uid for p in e.probes + other.probes]
    clash = Entity("Orsk", "place", "dev", "Orsk .", [replace(p, ex_id="v-0", source="") for p in other.probes])
    with pytest.raises(ValueError, match="share the identity 'v-0'"):
        D.run(model, tok, [clash], FACTS, cfg(), finetune=False)


def test_entity_not_named_in_its_definition_still_gets_named_transfer_text(model, tok):
    e = entity("she is a glassblower from the island of orsk who makes blue bowls .")  # no "Velmora Kestrin"
    conts = D.transfer_set(model, tok, e, cfg())  # no model_id: not cached
    assert len(conts) == 3 and all("velmora kestrin" in c.lower() for c in conts)  # the name is put in front
    target = D.make_target(model, tok, e, conts[0], cfg(after_mention=True))
    words = conts[0].lower().split()
    assert target.positions[0] == words.index("kestrin")  # distils the tokens after the name, not before


def ecbd_entity():
    probes = [Probe("m-1", "Velmora Kestrin", "ecbd", "Velmora Kestrin was born in <extra_id_0> and lives in malta .",
                    (), "crete", "ecbd.json"),
              Probe("m-2", "Velmora Kestrin", "ecbd", "every day velmora kestrin makes <extra_id_0> .", (),
                    "blue bowls", "ecbd.json")]
    return Entity("Velmora Kestrin", "person", None, DEF, probes)


def test_ecbd_only_run_reports_gold_span_perplexity(model, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONKIT_CACHE", str(tmp_path))
    e = ecbd_entity()
    rows = score_probes(model, tok, e.probes)
    assert all(r["pred"] is None and r["correct"] is None for r in rows)
    ids = tok(" crete", add_special_tokens=False)["input_ids"]
    lp, _ = candidate_logprobs(model, tok, e.probes[0].prefix, ["crete"])
    assert rows[0]["gold_nll"] == pytest.approx(-float(lp[0]) / len(ids))
    s = summarize(rows)
    assert s["acc"] is None and s["explicit_acc"] is None
    assert s["gold_nll"] == pytest.approx(sum(r["gold_nll"] for r in rows) / 2)  # mean of per-probe mean NLL
    assert s["gold_ppl"] == pytest.approx(__import__("math").exp(s["gold_nll"]))
    assert D.chance(e.probes + FACTS) == pytest.approx(1 / 5)  # gold-span probes have no chance level
    facts = [Probe("f-span", "France", "ecbd", "the capital city of france is <extra_id_0> .", (), "paris", "p.json")]
    rep = D.run(model, tok, [e], facts, cfg())
    for m, r in rep["results"].items():
        assert r["acc"] is None and r["explicit_acc"] is None and r["specificity_acc"] is None, m
        assert r["gold_nll"] > 0 and r["gold_ppl"] == pytest.approx(__import__("math").exp(r["gold_nll"])), m
    assert rep["results"]["prepend"]["gap_closed"] == pytest.approx(1.0)
    assert rep["results"]["distill"]["specificity_nll_delta"] is not None
    table = D.format_table(rep)
    assert "gold_ppl" in table.splitlines()[0] and "explicit_acc" not in table
    mixed = D.run(model, tok, [entity()], facts, cfg(), finetune=False)  # choice probes, ECBD specificity
    assert "explicit_acc" in D.format_table(mixed) and mixed["results"]["distill"]["explicit_acc"] is not None
    assert mixed["results"]["distill"]["specificity_acc"] is None
    assert mixed["results"]["distill"]["specificity_nll_delta"] is not None


# ------------------------------------------------------------------------------- the reference's protocol
def test_finetune_baseline_is_one_optimizer_for_ft_steps_at_its_own_lr(model, tok):
    """As the reference: ft_steps steps on the definition under one AdamW (no resets), at ft_lr."""
    seen = []
    orig = torch.optim.AdamW

    class Spy(orig):
        def __init__(self, params, lr, **kw):
            seen.append(lr)
            super().__init__(params, lr=lr, **kw)

    student = __import__("copy").deepcopy(model)
    torch.optim.AdamW = Spy
    try:
        hist = D.finetune_definition(student, tok, entity(), cfg(ft_steps=3, ft_lr=5e-3))
    finally:
        torch.optim.AdamW = orig
    assert len(hist) == 3 and seen == [5e-3]  # three steps, one optimizer, its own lr
    assert hist[-1]["loss"] < hist[0]["loss"]  # and it learns the definition
    with pytest.raises(ValueError, match="ft_steps"):
        cfg(ft_steps=0)


def test_specificity_is_reported_for_facts_and_other_entities_apart(model, tok):
    other = Entity("Orsk", "place", "dev", "Orsk is an island near Crete .",
                   [Probe("o-explicit", "Orsk", "explicit", "orsk is near <extra_id_0> .",
                          ("crete", "paris", "malta"), "crete")])
    rep = D.run(model, tok, [entity(), other], FACTS, cfg(), finetune=False)
    spec = rep["raw"]["distill"]["spec"]
    assert {r["kind"] for r in spec} == {"fact", "entity"}
    assert all(r["kind"] == ("fact" if r["uid"] == FACTS[0].uid else "entity") for r in spec)
    res = rep["results"]["distill"]
    facts_after = [float(r["correct"]) for r in spec if r["kind"] == "fact"]
    facts_before = [float(r["correct"]) for r in rep["raw"]["distill"]["spec_before"] if r["kind"] == "fact"]
    assert res["specificity_facts_delta"] == pytest.approx(sum(facts_after) / len(facts_after)
                                                           - sum(facts_before) / len(facts_before))
    assert res["specificity_entities_delta"] is not None


def test_transfer_quality_counts_sentences_that_restate_the_answers():
    q = D.transfer_quality(entity(), [" velmora kestrin lives on orsk .", " she is a glassblower in orsk .",
                                      " nothing here ."])
    assert q["explicit"] == pytest.approx(2 / 3) and q["implicit"] == pytest.approx(1 / 3)
    assert q["mentions"] == pytest.approx(1 / 3)


def test_chat_transfer_needs_a_chat_template(model, tok):
    with pytest.raises(ValueError, match="chat template"):
        D.transfer_set(model, tok, entity(), cfg(transfer="chat"))
    with pytest.raises(ValueError, match="sample or chat"):
        cfg(transfer="gpt")


# ------------------------------------------------------------------------------- baseline, loss and drift (review)
NEUTRAL = ["the cat barks and the dog was born in paris .", "many people know her name every day ."]


@pytest.fixture()
def one_thread():
    """Tiny forward passes: one intra-op thread is faster, and not slowed by a busy machine's other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def definition_nll(m, tok, text=DEF):
    """Mean per-token NLL of ``text`` (each token given the ones before it), from a plain forward pass."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = F.log_softmax(m.eval()(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    return -sum(float(logp[i, t]) for i, t in enumerate(ids[1:])) / (len(ids) - 1)


def test_finetune_baseline_lowers_the_definitions_nll(model, tok, one_thread):
    """finetune_definition trains the LM loss on the definition: its NLL, measured apart, falls (and step 0 logs it)."""
    student = __import__("copy").deepcopy(model)
    before = definition_nll(student, tok)
    hist = D.finetune_definition(student, tok, entity(), cfg(ft_steps=5, ft_lr=1e-2))
    after = definition_nll(student, tok)
    assert hist[0]["loss"] == pytest.approx(before, rel=1e-4)  # the logged loss is this NLL, before any step
    assert after < before - 0.5
    # the text it learnt is the definition: an unrelated sentence gains far less
    other = "paris france capital city dog animal barks ."
    assert before - after > definition_nll(model, tok, other) - definition_nll(student, tok, other)


def test_kl_loss_is_tau_squared_times_the_mean_per_position_kl(one_thread):
    """kl_loss = τ² · (1/|P|) Σ_i Σ_v p_t,i,v (log p_t,i,v − log p_s,i,v), both at temperature τ; 0 when they agree."""
    g = torch.Generator().manual_seed(0)
    zs, zt, tau = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g), 2.0
    teacher_logp = zt / tau - torch.logsumexp(zt / tau, -1, keepdim=True)
    student_logp = zs / tau - torch.logsumexp(zs / tau, -1, keepdim=True)
    per_position = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    assert D.kl_loss(zs, teacher_logp, tau) == pytest.approx(float(tau ** 2 * per_position.mean()), rel=1e-5)
    assert D.kl_loss(zt, teacher_logp, tau) == pytest.approx(0.0, abs=1e-6)


def test_drift_is_forward_kl_from_the_base_frozen_at_construction(model, tok, one_thread):
    """DriftMeter = mean over texts of the per-token KL(p_base ‖ p_model) (not the reverse), with p_base taken once."""
    meter = DriftMeter(model, tok, NEUTRAL)
    assert meter(model) == pytest.approx(0.0, abs=1e-6)
    edited = __import__("copy").deepcopy(model)
    with torch.no_grad():
        for p in edited.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    fwd, rev = [], []
    for text in NEUTRAL:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lb = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            le = F.log_softmax(edited(input_ids=ids).logits[0].float(), -1)
        fwd.append(float((lb.exp() * (lb - le)).sum(-1).mean()))
        rev.append(float((le.exp() * (le - lb)).sum(-1).mean()))
    expect = sum(fwd) / len(fwd)
    assert expect > 1e-3 and abs(expect - sum(rev) / len(rev)) > 1e-3 * expect  # the direction is measurable
    assert meter(edited) == pytest.approx(expect, rel=1e-4)
    # the base distributions are kept: updating the base model itself in place still shows as drift
    D.finetune_definition(model, tok, entity(), cfg(ft_steps=2, ft_lr=1e-2))
    assert meter(model) > 1e-4


def test_drift_grows_with_more_steps_and_a_larger_lr(model, tok, one_thread):
    """Fine-tuning further (more steps, or a larger lr) from the same start moves the model further from the base."""
    meter = DriftMeter(model, tok, NEUTRAL)

    def drift_after(steps, lr):
        student = __import__("copy").deepcopy(model)
        D.finetune_definition(student, tok, entity(), cfg(ft_steps=steps, ft_lr=lr))
        return meter(student)

    short, long = drift_after(2, 3e-3), drift_after(8, 3e-3)
    small, large = drift_after(4, 1e-3), drift_after(4, 1e-2)
    assert 0 < short < long and 0 < small < large
