import pytest

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
