"""Fusing models whose tokenizers differ, on two tiny tokenizers built in code (a word-level one and a byte-level
BPE, like SmolLM2's) and tiny random GPT-2s: token alignment by DTW, the MinED vocabulary map, and Cool-Fusion -
which, given two copies of one model, is that model's own greedy decoding."""
import pytest
import torch

from conftest import WORDS, toy_frame
from fusionkit.distill.cool_fusion import cool_fusion, greedy_text, segment_logprob, words
from fusionkit.distill.token_alignment import (VocabularyMap, align, dtw_align, edit_distance, map_distribution,
                                               token_cost)

SENTENCES = list(toy_frame(200)["text"])


def word_level():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")


def byte_bpe():
    """Byte-level BPE trained on the toy sentences: frequent words whole ("Ġgood"), rare ones in pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_lm(vocab_size, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128, eos_token_id=None)
    return GPT2LMHeadModel(config).eval()


def test_edit_distance_and_cost_by_hand():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("a", "a") == 0
    assert token_cost(" the", "the") == 0.0 and token_cost("cat", "cats") == pytest.approx(1 / 4)


def test_dtw_aligns_a_split_word_to_the_whole_one():
    assert dtw_align(["the", "cat", "s"], ["the", "cats"]) == [(0, 0), (1, 1), (2, 1)]
    assert dtw_align(["a", "b"], []) == []


def test_identical_tokenizers_align_on_the_diagonal():
    tok = byte_bpe()
    text = "the acting was quite awful but the story was fine"
    got = align(tok, tok, text)
    n = len(got["ids_a"])
    assert got["path"] == [(i, i) for i in range(n)] and got["one_to_one"] == {i: i for i in range(n)}


def test_two_different_tokenizers_align_by_text():
    a, b = word_level(), byte_bpe()
    text = "the acting was quite awful but the story was fine"
    got = align(a, b, text)
    assert len(got["ids_a"]) == len(text.split()) != len(got["ids_b"])  # really two tokenizations
    path = got["path"]
    assert path[0] == (0, 0) and path[-1] == (len(got["ids_a"]) - 1, len(got["ids_b"]) - 1)
    assert all(i2 - i1 in (0, 1) and j2 - j1 in (0, 1) for (i1, j1), (i2, j2) in zip(path, path[1:]))
    # a word both keep whole aligns one to one, to itself
    for i, j in got["one_to_one"].items():
        assert got["surfaces_a"][i].strip() == got["surfaces_b"][j].strip(), (i, j)
    assert len(got["one_to_one"]) >= 3


def test_vocabulary_map_exact_then_nearest_and_a_mapped_distribution():
    a, b = word_level(), byte_bpe()
    vmap = VocabularyMap(a, b)
    story, good = a.convert_tokens_to_ids("story"), a.convert_tokens_to_ids("good")
    assert b.decode([vmap[story]]).strip() == "story"  # the same surface where b has it ("Ġstory")
    # b keeps no "good" (it splits it g/oo/d): the nearest surface by edit distance instead
    surface = {i: b.decode([i]).strip() for i in range(len(b))}
    nearest = min(token_cost("good", t) for t in surface.values() if t[:1] == "g")
    assert surface[vmap[good]] != "good" and token_cost("good", surface[vmap[good]]) == nearest
    logp = torch.full((1, len(a)), -30.0)
    logp[0, good], logp[0, a.convert_tokens_to_ids("bad")] = torch.log(torch.tensor(0.75)), torch.log(torch.tensor(0.25))
    p = map_distribution(logp, vmap, len(b), k=2)
    assert p.shape == (1, len(b)) and float(p.sum()) == pytest.approx(1.0)
    assert float(p[0, vmap[good]]) == pytest.approx(0.75, abs=1e-4)


def test_cool_fusion_of_two_copies_is_the_models_own_greedy_decoding():
    tok = word_level()
    model = tiny_lm(len(tok), seed=0)
    prompt = "the movie was"
    fused = cool_fusion([(model, tok), (model, tok)], prompt, max_words=6)
    assert len(fused["rounds"]) == 6 and all(len(set(r["proposals"])) == 1 for r in fused["rounds"])
    assert fused["text"] == greedy_text(model, tok, prompt, max_new_tokens=6)
    assert words(fused["text"]) == 6


def test_cool_fusion_keeps_the_proposal_all_models_score_best():
    a, b = word_level(), byte_bpe()
    pair = [(tiny_lm(len(a), seed=1), a), (tiny_lm(len(b), seed=2), b)]
    prompt = "the plot was"
    fused = cool_fusion(pair, prompt, max_words=5, max_tokens=4)
    context = prompt
    for r in fused["rounds"]:
        assert r["kept"] == max(range(2), key=lambda i: r["fused"][i])
        for m, segment in enumerate(r["proposals"]):  # the matrix: every model scores every proposal, per word
            for k, (model, tok) in enumerate(pair):
                expected = segment_logprob(model, tok, context, segment) / words(segment) if segment else float("-inf")
                assert r["scores"][m][k] == pytest.approx(expected, abs=1e-4)
            assert r["fused"][m] == pytest.approx(sum(r["scores"][m]) / 2, abs=2e-4)
        context += r["proposals"][r["kept"]]
    assert prompt + fused["text"] == context


def test_segment_logprob_is_the_sum_over_the_segments_own_tokens():
    tok = word_level()
    model = tiny_lm(len(tok), seed=3)
    ids = tok("the movie was good")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    by_hand = float(logp[2, ids[3]])  # " good" after "the movie was": one token, predicted at position 2
    assert segment_logprob(model, tok, "the movie was", " good") == pytest.approx(by_hand, abs=1e-5)


def test_choose_fuses_per_word_candidate_scores():
    from fusionkit.distill.cool_fusion import choose
    from fusionkit.distill.probes import candidate_logprobs

    a, b = word_level(), byte_bpe()
    pair = [(tiny_lm(len(a), seed=4), a), (tiny_lm(len(b), seed=5), b)]
    cands = ["good", "very bad", "quite fine story"]
    got = choose(pair, "the movie was", cands)
    for k, (model, tok) in enumerate(pair):
        lp = candidate_logprobs(model, tok, "the movie was", cands)[0]
        assert [row[k] for row in got["scores"]] == pytest.approx([float(lp[c]) / words(w) for c, w in enumerate(cands)])
    assert got["choice"] == max(range(3), key=lambda c: sum(got["scores"][c]))
    alone = choose(pair[:1], "the movie was", cands)
    assert alone["fused"] == pytest.approx([row[0] for row in got["scores"]])


def test_fusellm_targets_from_a_copy_with_every_token_match_the_students_own_distribution():
    """Identical tokenizers and a teacher that is the student: every position aligns, and with k = the whole
    vocabulary the mapped target is the student's own distribution - the KL term starts at zero."""
    import copy

    from fusionkit.distill.fusellm import aligned_targets, fused_loss
    from fusionkit.distill.token_alignment import VocabularyMap

    tok = word_level()
    student = tiny_lm(len(tok), seed=6)
    text = "the acting was quite awful but the story was fine"
    item = aligned_targets(copy.deepcopy(student), tok, tok, text, VocabularyMap(tok, tok), len(tok), k=len(tok))
    assert sorted(item.targets) == list(range(len(item.ids) - 1))  # every next token has a target
    with torch.no_grad():
        logits = student(input_ids=item.ids[None]).logits[0]
    assert float(fused_loss(logits, item, lam=0.0)) == pytest.approx(0.0, abs=1e-5)
    ce = torch.nn.functional.cross_entropy(logits[:-1], item.ids[1:])
    assert float(fused_loss(logits, item, lam=1.0)) == pytest.approx(float(ce), rel=1e-6)  # λ = 1: fine-tuning


def test_fusellm_distillation_across_vocabularies_moves_the_student_to_the_teacher():
    """A word-level student learns from a BPE teacher through the alignment: its KL to the mapped teacher falls."""
    from fusionkit.distill.fusellm import aligned_targets, fuse_distill, fused_loss
    from fusionkit.distill.token_alignment import VocabularyMap

    s_tok, t_tok = word_level(), byte_bpe()
    student, teacher = tiny_lm(len(s_tok), seed=7), tiny_lm(len(t_tok), seed=8)
    texts = SENTENCES[:4]
    vmap = VocabularyMap(t_tok, s_tok)
    items = [aligned_targets(teacher, t_tok, s_tok, t, vmap, len(s_tok), k=5) for t in texts]
    assert all(float(p.sum()) == pytest.approx(1.0, abs=1e-5) for i in items for p in i.targets.values())

    def kl_now():
        with torch.no_grad():
            return sum(float(fused_loss(student(input_ids=i.ids[None]).logits[0], i, 0.0)) for i in items)

    before = kl_now()
    run = fuse_distill(student, s_tok, teacher, t_tok, texts, steps=40, lam=0.0, k=5, lr=3e-3)
    assert 0 < run["aligned_share"] < 1 and len(run["curve"]) == 40  # two vocabularies: not every token aligns
    assert kl_now() < 0.5 * before
    plain = fuse_distill(tiny_lm(len(s_tok), seed=7), s_tok, teacher, t_tok, texts, steps=3, lam=1.0)
    assert plain["aligned_share"] == 0 and len(plain["curve"]) == 3  # λ = 1: fine-tuning, the teacher unread



def test_alignment_explorer_redraws_the_grid_and_path_for_a_new_sentence():
    from fusionkit.viz import widgets

    a, b = word_level(), byte_bpe()
    ex = widgets.alignment_explorer(a, b, "the acting was fine", names=("words", "bpe"))
    heat, path = ex.figure.data
    assert len(heat.y) == 4 and list(path.y)[-1].startswith("3:")  # four words, the path ends at the last one
    ex.controls["text"].value = "the story was quite awful but the acting was fine"
    heat, path = ex.figure.data
    want = align(a, b, ex.controls["text"].value)
    assert len(heat.y) == 10 and len(path.x) == len(want["path"])
    assert [int(y.split(":")[0]) for y in path.y] == [i for i, _ in want["path"]]
    assert not ex.errors.outputs
