"""`fusionkit cache list|verify|prune|path` on a fresh cache and on one with artefacts, leftovers and damage.

The artefacts here are written through the kit's own :func:`~fusionkit.core.artefacts.obtain`, without torch, so
these tests are fast; tests/test_cache_faults.py damages real experts, statistics and bases.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from fusionkit.cli import main
from fusionkit.core import manifest
from fusionkit.core.artefacts import Artefact, build_lock, obtain
from fusionkit.core.cache import HOST, cache_root, write_json


def make(kind: str, name: str, size: int, folder: bool = False, days_ago: float = 0.0) -> Artefact:
    """A cached artefact of ``size`` bytes, last used ``days_ago``."""
    art = Artefact(cache_root() / kind / name, folder, f"test {kind}", f"{kind} {name} made by a test")

    def build(tmp):
        (tmp / "data.bin" if folder else tmp).write_bytes(b"x" * size)
        return art.path
    obtain(art, lambda p: p, build)
    t = time.time() - days_ago * 86400
    os.utime(manifest.manifest_path(art.path, folder), (t, t))
    return art


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["cache", *argv])
    out, err = capsys.readouterr()
    return code, out + err


def test_a_fresh_cache(capsys):
    assert run(capsys, "list") == (0, run(capsys, "list")[1])
    assert "0 artefacts, 0 B in all" in run(capsys, "list")[1]
    assert run(capsys, "verify")[0] == 0 and "0 checked, 0 damaged" in run(capsys, "verify")[1]
    assert run(capsys, "prune", "--dry-run") == (0, "nothing to prune\n")
    assert run(capsys, "prune", "--older-than", "30d", "--max-size", "1GB") == (0, "nothing to prune\n")
    assert run(capsys, "path") == (0, f"{cache_root()}\n")
    assert run(capsys, "path", "experts") == (0, f"{cache_root() / 'experts'}\n")
    assert json.loads(run(capsys, "list", "--json")[1]) == []


def test_the_cache_command_loads_no_torch():
    code = ("import sys; from fusionkit.cli import main\n"
            "for argv in (['cache', 'list'], ['cache', 'verify'], ['cache', 'prune', '--dry-run'], ['cache', 'path']):\n"
            "    main(argv)\n"
            "print('LOADED', sorted(m for m in ('torch._C', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED []"


def test_list_shows_kind_size_last_used_and_what_made_it(capsys):
    make("experts", "e1", 2000, folder=True, days_ago=3)
    make("stats", "e1/gram-1.safetensors", 500)
    make("zoos", "tiny.json", 30)
    code, out = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    expert = next(l for l in lines if "experts/e1" in l)
    assert "3 d ago" in expert and "experts" in expert and "experts e1 made by a test" in expert
    assert any("stats/e1/gram-1.safetensors" in l and "500 B" in l for l in lines)
    assert "3 artefacts" in lines[-1]
    rows = json.loads(run(capsys, "list", "--json", "--kind", "stats,zoos")[1])
    assert sorted(r["kind"] for r in rows) == ["stats", "zoos"] and all(r["managed"] for r in rows)


def test_verify_reports_damage_and_can_move_it_aside_for_a_rebuild(capsys):
    good = make("zoos", "a.json", 40)
    bad = make("stats", "e1/gram-1.safetensors", 100)
    data = bytearray(bad.path.read_bytes())
    data[50] ^= 1  # one flipped bit; size and (restored) mtime unchanged, so only hashing finds it
    st = bad.path.stat()
    bad.path.write_bytes(bytes(data))
    os.utime(bad.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, out = run(capsys, "verify")
    assert code == 1
    assert any(l.startswith("damaged") and "gram-1.safetensors does not match the sha256" in l for l in out.splitlines())
    assert any(l.startswith("ok") and "zoos/a.json" in l for l in out.splitlines())
    code, out = run(capsys, "verify", "--move-aside")
    assert code == 1 and "/.damaged/stats/e1/gram-1.safetensors.damaged-" in out
    assert not bad.path.exists() and good.path.exists()
    assert run(capsys, "verify")[0] == 0
    assert "[damaged] moved aside when found damaged" in run(capsys, "list")[1]
    code, out = run(capsys, "prune")
    assert "removed" in out and "(moved aside" not in out
    assert not (cache_root() / ".damaged").exists() or not any((cache_root() / ".damaged").rglob("*.damaged-*"))


def test_an_artefact_from_before_manifests_is_listed_and_structurally_checked(capsys):
    folder = cache_root() / "experts" / "old"
    folder.mkdir(parents=True)
    write_json(folder / "recipe.json", {"task": "x"})
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # header longer than the file
    code, out = run(capsys, "list")
    assert "experts/old" in out and "(no manifest" in out and "1 artefacts" in out
    code, out = run(capsys, "verify")
    assert code == 1 and "model.safetensors is 10 bytes, shorter than its header" in out


def test_prune_by_kind_with_a_dry_run_first(capsys):
    stats = make("stats", "e1/gram-1.safetensors", 100)
    zoo = make("zoos", "a.json", 40)
    code, out = run(capsys, "prune", "--kind", "stats", "--dry-run")
    assert code == 0 and "would remove" in out and "stats/e1/gram-1.safetensors" in out and "would free 100 B" in out
    assert stats.path.exists()
    code, out = run(capsys, "prune", "--kind", "stats")
    assert "removed" in out and "freed 100 B" in out
    assert not stats.path.exists() and zoo.path.exists()
    assert not manifest.manifest_path(stats.path, False).exists()  # its manifest went with it
    assert not (cache_root() / "stats" / "e1").exists() and (cache_root() / "stats").is_dir()  # no empty folder left


def test_prune_by_age_and_by_size_budget_least_recently_used_first(capsys):
    old = make("experts", "old", 1000, folder=True, days_ago=40)
    mid = make("experts", "mid", 1000, folder=True, days_ago=10)
    new = make("experts", "new", 1000, folder=True, days_ago=0)
    code, out = run(capsys, "prune", "--older-than", "30d")
    assert "last used 40 d ago" in out and not old.path.exists() and mid.path.exists()
    code, out = run(capsys, "prune", "--max-size", "1.5kB", "--dry-run")
    assert "experts/mid" in out and "experts/new" not in out and "over the 1.5 kB budget" in out
    run(capsys, "prune", "--max-size", "1.5kB")
    assert not mid.path.exists() and new.path.exists()


def test_prune_removes_abandoned_temporaries_and_keeps_what_is_being_written(capsys):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    experts = cache_root() / "experts"
    experts.mkdir(parents=True)
    abandoned = experts / f"abc.tmp-{HOST}-{dead}-x1"
    live = experts / f"def.tmp-{HOST}-{os.getpid()}-x2"
    for folder in (abandoned, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    out = run(capsys, "list")[1]
    assert "[leftover, abandoned]" in out and "[leftover, in progress]" in out
    out = run(capsys, "prune")[1]
    assert "temporary of a write that died" in out
    assert not abandoned.exists() and live.exists()


def test_prune_keeps_an_artefact_whose_build_lock_is_held(capsys):
    art = make("zoos", "a.json", 40)
    with build_lock(art.path):
        out = run(capsys, "prune", "--kind", "zoos")[1]
    assert "kept: being built" in out and art.path.exists()


def test_bad_sizes_and_ages_are_one_line_errors(capsys):
    code, out = run(capsys, "prune", "--max-size", "lots")
    assert code == 2 and out.strip() == ("fusionkit cache: error: cannot read size 'lots'; fix: write it like 500MB, "
                                         "2GB or 1.5GiB")
    assert run(capsys, "prune", "--older-than", "soon")[0] == 2
