"""Interrupted single-file writes (core.cache.atomic_file / atomic_write_text / write_json): whatever stops a write -
an exception in the middle, a failing fsync or rename, Ctrl-C, SIGKILL - the previous content stays and no temporary
is left behind (a killed writer's one is swept by the next write). test_cache.py covers folders and safetensors."""
import os

import pytest

from conftest import kill_mid_write
from fusionkit.core import cache
from fusionkit.core.cache import HOST, atomic_file, atomic_write_text, read_json, write_json


def names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def previous(tmp_path):
    """A finished file with known content, the only entry of its folder."""
    path = write_json(tmp_path / "recipe.json", {"version": 1})
    assert names(tmp_path) == ["recipe.json"]
    return path


def test_an_exception_halfway_through_the_write_keeps_the_previous_file(previous):
    """A write that raises after writing part of the new content: the old content stays and the temporary goes."""
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_file(previous) as tmp:
            with open(tmp, "w") as f:
                f.write('{"version": 2, "half')
                f.flush()
            assert tmp.parent == previous.parent and tmp.read_text().startswith('{"version": 2')
            raise RuntimeError("disk gone")
    assert read_json(previous) == {"version": 1}
    assert names(previous.parent) == ["recipe.json"]


def test_ctrl_c_during_the_write_keeps_the_previous_file(previous, monkeypatch):
    """KeyboardInterrupt (a BaseException, not an Exception) while the text is written: same guarantee."""
    real = type(previous).write_text

    def interrupted(self, text, *a, **kw):
        real(self, text[: len(text) // 2], *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(previous), "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(previous, '{"version": 2}\n')
    monkeypatch.undo()
    assert read_json(previous) == {"version": 1}
    assert names(previous.parent) == ["recipe.json"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_keeps_the_previous_file_and_removes_the_temporary(previous, monkeypatch, step):
    """The data fsync or the rename fails (EIO, ENOSPC...): the error reaches the caller, nothing half-done stays."""
    def fail(*a, **kw):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError, match="Input/output error"):
        write_json(previous, {"version": 2})
    monkeypatch.undo()
    assert read_json(previous) == {"version": 1}
    assert names(previous.parent) == ["recipe.json"]
    # and the next write goes through
    write_json(previous, {"version": 3})
    assert read_json(previous) == {"version": 3} and names(previous.parent) == ["recipe.json"]


def test_a_failing_write_of_a_new_file_leaves_no_file_at_all(tmp_path, monkeypatch):
    """Interrupted before the first version exists: neither the destination nor a temporary appears."""
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(tmp_path / "sub" / "new.txt", "x" * 1000)
    assert names(tmp_path / "sub") == []


KILLED = """
import time
from pathlib import Path
from fusionkit.core.cache import atomic_file
with atomic_file(Path(DEST)) as tmp:
    tmp.write_text('{"version": 2, "half of it')
    print("writing", flush=True)
    time.sleep(120)
"""


def test_a_writer_killed_mid_write_keeps_the_previous_file_and_the_next_write_sweeps_its_temporary(previous):
    """SIGKILL while the temporary is half written: the destination still reads as before, the one leftover carries
    the dead writer's pid, and the next write to the same file removes it."""
    pid = kill_mid_write(f"DEST = {str(previous)!r}\n" + KILLED)
    assert read_json(previous) == {"version": 1}
    left = [n for n in names(previous.parent) if n != "recipe.json"]
    assert len(left) == 1 and left[0].startswith(f".recipe.json.tmp-{HOST}-{pid}-")
    assert cache.leftover_of(previous.parent / left[0]) == "recipe.json"
    write_json(previous, {"version": 3})
    assert read_json(previous) == {"version": 3}
    assert names(previous.parent) == ["recipe.json"]
