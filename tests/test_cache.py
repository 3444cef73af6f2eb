import pytest

from conftest import kill_mid_write
from fusionkit.core.errors import CacheError
from fusionkit.core.cache import atomic_dir, atomic_write_text, cache_dir, stable_hash


def test_stable_hash_ignores_key_order_and_sees_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_atomic_dir_moves_into_place_only_on_success(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "f.txt").write_text("x")
        assert not dest.exists()
    assert (dest / "f.txt").read_text() == "x"

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "broken") as tmp:
            (tmp / "half.bin").write_bytes(b"0")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_atomic_dir_never_overwrites_unless_told(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(dest):
            pass
    assert (dest / "keep.txt").read_text() == "user data"
    with atomic_dir(dest, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("n")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]


def test_atomic_write_text(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.json", "{}")
    assert p.read_text() == "{}"
    assert sorted(x.name for x in p.parent.iterdir()) == ["b.json"]


def test_unwritable_cache_fails_with_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FUSIONKIT_CACHE", str(blocker / "cache"))
    with pytest.raises(CacheError, match="FUSIONKIT_CACHE"):
        cache_dir("models")


def test_code_version_follows_code_not_comments(tmp_path, monkeypatch):
    """Cache keys change when the code that makes an artefact changes, not when its comments or docstrings do."""
    import importlib
    import sys

    from fusionkit.core.versioning import code_version

    def version_of(source: str) -> str:
        (tmp_path / "maker.py").write_text(source)
        sys.modules.pop("maker", None)
        importlib.invalidate_caches()
        code_version.cache_clear()
        return code_version("maker:make")

    monkeypatch.syspath_prepend(str(tmp_path))
    a = version_of('def make(x):\n    """Doc."""\n    return x + 1\n\ndef other():\n    return 0\n')
    assert version_of('def make(x):\n    """Reworded."""\n    # a comment\n    return x + 1\n\ndef other():\n    return 0\n') == a
    assert version_of('def make(x):\n    return x + 1\n\ndef other():\n    return 1\n') == a  # another function
    assert version_of('def make(x):\n    return x + 2\n\ndef other():\n    return 0\n') != a


# ------------------------------------------------------------------------------------- durable writes
import json
import os
import subprocess
import sys
import time

from fusionkit.core import manifest
from fusionkit.core.artefacts import Artefact, build_lock, obtain
from fusionkit.core.cache import HOST, cache_root, sweep, write_json
from fusionkit.core.errors import CacheWarning


def _fd_path(fd):
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="names file descriptors through /proc")
def test_file_and_folder_writes_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real = {n: getattr(os, n) for n in ("fsync", "replace", "rename")}
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))), real["fsync"](fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(b))), real["replace"](a, b))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(b))), real["rename"](a, b))[1])

    write_json(tmp_path / "recipe.json", {"a": 1})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "rename", "fsync"]
    assert ".recipe.json.tmp-" in events[0][1] and events[1][1] == str(tmp_path / "recipe.json")
    assert events[2][1] == str(tmp_path)  # the directory entry of the rename

    events.clear()
    with atomic_dir(tmp_path / "merged") as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "mergekit.yml").write_text("merge_method: ties\n")
    rename = next(i for i, e in enumerate(events) if e[0] == "rename")
    synced = {os.path.basename(p) for _, p in events[:rename]}
    assert {"model.safetensors", "mergekit.yml", "sub"} <= synced  # files and their folders, before the rename
    assert any(p.endswith(".tmp-" + p.rsplit(".tmp-", 1)[-1]) for _, p in events[:rename])  # the temp folder itself
    assert events[rename + 1:] == [("fsync", str(tmp_path))]


def test_an_exception_mid_overwrite_keeps_the_previous_output_and_no_temporary(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "model.safetensors").write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half of the ne")
            raise RuntimeError("interrupted")
    assert (dest / "model.safetensors").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


KILLED_WRITERS = {
    "folder": """
from fusionkit.core.cache import atomic_dir
with atomic_dir(DEST, overwrite=True) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half of the new one")
    print("writing", flush=True)
    time.sleep(120)
""",
    "safetensors": """
import torch
from fusionkit.merging.safetensors_io import SafetensorsWriter
layout = {"a": ("F32", (2,)), "b": ("F32", (2,))}
with SafetensorsWriter(DEST, layout) as w:
    w.write("a", torch.full((2,), 9.0))
    print("writing", flush=True)
    time.sleep(120)
""",
}


@pytest.mark.parametrize("kind", sorted(KILLED_WRITERS))
def test_a_killed_writer_leaves_the_previous_state_and_its_temporary_is_swept(kind, tmp_path):
    """SIGKILL mid-write: the previous output is intact, nothing looks finished, and the temporary (named with the
    dead writer's pid) is removed by the next write to the same place."""
    import torch
    from safetensors.torch import load_file, save_file

    dest = tmp_path / ("out" if kind == "folder" else "stats.safetensors")
    if kind == "folder":
        with atomic_dir(dest) as tmp:
            (tmp / "model.safetensors").write_bytes(b"previous")
    else:
        save_file({"a": torch.ones(2), "b": torch.zeros(2)}, str(dest))
    before = sorted(p.name for p in tmp_path.iterdir())
    code = f"import time\nfrom pathlib import Path\nDEST = Path({str(dest)!r})\n" + KILLED_WRITERS[kind]
    pid = kill_mid_write(code)
    if kind == "folder":
        assert (dest / "model.safetensors").read_bytes() == b"previous"
    else:
        assert torch.equal(load_file(dest)["a"], torch.ones(2))
    left = sorted(set(p.name for p in tmp_path.iterdir()) - set(before))
    assert len(left) == 1 and f".tmp-{HOST}-{pid}-" in left[0]  # the dead writer's, never the finished name
    assert sweep(dest) == [tmp_path / left[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_writer_killed_between_its_two_renames_is_rolled_back(tmp_path):
    """Overwriting moves the old folder aside, then renames the new one in; killed in between, the old one is put back."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = tmp_path / f"out.old-{HOST}-{int(dead.stdout)}-abcd1234"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"previous")
    with pytest.raises(FileExistsError):  # the next write restores it first, then refuses to clobber it
        with atomic_dir(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sweep_keeps_live_writers_and_a_users_own_files(tmp_path):
    live = tmp_path / f".x.json.tmp-{HOST}-{os.getpid()}-zz"
    mine = tmp_path / "x.json.old"  # a user's own backup beside an output: not the kit's
    live.write_text("{")
    mine.write_text("{}")
    os.utime(mine, (0, 0))
    assert sweep(tmp_path / "x.json") == []
    assert live.exists() and mine.exists()


# ------------------------------------------------------------------------------------- obtain
def _json_artefact(name="table.json"):
    return Artefact(cache_root() / "zoos" / name, False, "a test table", "made by a test")


def _writes(obj, calls=None):
    """A build function that writes ``obj`` as JSON and returns it (counting its calls)."""
    def build(tmp):
        if calls is not None:
            calls.append(tmp)
        write_json(tmp, obj)
        return obj
    return build


def _load(path):
    return json.loads(path.read_text())


def test_obtain_builds_once_records_a_manifest_and_reuses_it():
    calls = []
    art = _json_artefact()
    assert obtain(art, _load, _writes({"x": 1}, calls)) == {"x": 1}
    assert obtain(art, _load, _writes({"x": 1}, calls)) == {"x": 1}
    assert len(calls) == 1
    m = manifest.read(art.path, False)
    assert m["summary"] == "made by a test" and m["files"]["table.json"]["size"] == art.path.stat().st_size
    assert manifest.manifest_path(art.path, False) == cache_root() / ".manifests" / "zoos" / "table.json.json"
    assert sorted(p.name for p in art.path.parent.iterdir()) == ["table.json"]  # the file's folder holds nothing else


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete-manifest-then-truncate", "garble-manifest"])
def test_a_damaged_artefact_is_moved_aside_and_rebuilt(damage):
    art = _json_artefact()
    obtain(art, _load, _writes({"score": 0.81}))
    text = art.path.read_text()
    if damage == "truncate":
        art.path.write_text(text[: len(text) // 2])
    elif damage == "flip":
        art.path.write_text(text.replace("0.81", "0.91"))  # still valid JSON, same size: only the digest sees it
    elif damage == "delete-manifest-then-truncate":
        manifest.manifest_path(art.path, False).unlink()
        art.path.write_text(text[:5])
    else:
        manifest.manifest_path(art.path, False).write_text("{not json")
    with pytest.warns(CacheWarning, match="a test table at .* was damaged .*building it again"):
        assert obtain(art, _load, _writes({"score": 0.81})) == {"score": 0.81}
    assert obtain(art, _load, lambda tmp: pytest.fail("built again")) == {"score": 0.81}
    assert len(list((cache_root() / ".damaged" / "zoos").iterdir())) == 1


def test_an_artefact_from_before_manifests_is_adopted_when_it_looks_whole():
    art = _json_artefact()
    write_json(art.path, {"x": 1})
    assert obtain(art, _load, lambda tmp: pytest.fail("built again")) == {"x": 1}
    assert manifest.read(art.path, False)["adopted"] is True


def test_a_large_file_is_sized_on_load_and_hashed_by_verify(monkeypatch):
    """Bytes that rot while size and mtime stay are left to `verify`; any write that changes the mtime is caught."""
    monkeypatch.setattr(manifest, "CHEAP_BYTES", 0)  # every file counts as large
    art = _json_artefact()
    obtain(art, _load, _writes({"score": 0.81}))
    st = art.path.stat()
    art.path.write_text(art.path.read_text().replace("0.81", "0.91"))
    os.utime(art.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert manifest.status(art.path, False).ok  # the cheap check: size and mtime are as recorded
    assert manifest.status(art.path, False, "all").reason == "table.json does not match the sha256 in its manifest"
    os.utime(art.path)  # a write that moves the mtime: the cheap check hashes it
    assert manifest.status(art.path, False).state == "damaged"


def test_a_load_that_fails_on_whole_files_is_a_bug_and_raises():
    art = _json_artefact()
    obtain(art, _load, _writes({"x": 1}))
    with pytest.raises(ZeroDivisionError):
        obtain(art, lambda p: 1 / 0, lambda tmp: pytest.fail("rebuilt a sound artefact"))


def test_build_lock_without_waiting_names_the_busy_artefact(tmp_path):
    with build_lock(tmp_path / "x"):
        code = ("from fusionkit.core.artefacts import build_lock\n"
                f"with build_lock({str(tmp_path / 'x')!r}, wait=False): pass")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0 and "is being built by another process" in res.stderr
