"""Where fusionkit keeps files, and how it writes them so nothing half-made is ever taken as finished.

Everything the kit builds (converted models, corpora, experts, zoo score tables) lives under one cache
directory: ``$FUSIONKIT_CACHE`` or ``~/.cache/fusionkit``. Entries are named by a content hash of the
recipe that made them, so asking for the same thing twice returns the first result at once.

Writes are atomic and durable: a file or folder is built under a temporary name beside its destination, its
contents are fsynced, and only then is it renamed into place (``os.replace``/``os.rename`` are atomic on one
filesystem) and the parent folder fsynced, so after a crash or power cut either the previous state or the new
one is on disk, never a mix. Temporaries carry this machine's tag and the writer's pid
(``NAME.tmp-<host>-<pid>-*``): an interrupted run leaves at most one that no lookup will ever return, and the
next write to the same destination (or ``fusionkit cache prune``) sweeps it once its writer is gone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import CacheError, OutputExistsError

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]  # which machine's pids a temporary names
STALE_SECONDS = 24 * 3600  # a temporary from another machine (or an older kit) counts as abandoned after a day
_LEFTOVER = re.compile(r"^\.?(?P<name>.+?)\.(?P<what>tmp|old)(?:-(?P<tag>.*))?$")
_TAG = re.compile(r"^(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-")


def cache_root() -> Path:
    """The cache folder, whether or not it exists yet."""
    return Path(os.environ.get("FUSIONKIT_CACHE") or Path.home() / ".cache" / "fusionkit").expanduser()


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache root (or a sub-folder of it), created on first use and checked for writability."""
    path = cache_root().joinpath(*parts)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise CacheError(
                f"cache folder {path} is not writable ({e.strerror}); "
                "fix: set FUSIONKIT_CACHE to a folder you can write to"
            ) from None
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-able object with sorted keys: the same recipe always gives the same name."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes in a file, or in every file under a folder (0 if absent)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ------------------------------------------------------------------------------------------ durability
def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename into it, a new file) durable. Some filesystems cannot; that is fine."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


# ------------------------------------------------------------------------------------------ leftovers
def leftover_of(path: Path) -> str | None:
    """The destination name a temporary (``*.tmp-*``) or moved-aside (``*.old-*``) entry belongs to, else None."""
    m = _LEFTOVER.match(path.name)
    return m.group("name") if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def abandoned(path: Path) -> bool:
    """Whether the writer of a leftover is gone: its pid is dead on this machine, or it is over a day old.

    An untagged name (an older kit's temporaries) counts only inside the cache, so a user's own ``x.old`` beside
    an output folder is never touched."""
    m = _LEFTOVER.match(path.name)
    if m is None:
        return False
    tag = _TAG.match(m.group("tag") or "")
    if tag and tag.group("host") == HOST:
        return not _alive(int(tag.group("pid")))
    if not tag and cache_root().resolve() not in path.resolve().parents:
        return False
    try:
        return time.time() - path.lstat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep(dest: str | os.PathLike) -> list[Path]:
    """Remove the abandoned temporaries of ``dest``; if a killed overwrite left the previous version moved
    aside and no ``dest``, put the previous version back. Returns what was removed or restored."""
    dest = Path(dest)
    done = []
    if not dest.parent.is_dir():
        return done
    for p in sorted(dest.parent.iterdir()):
        if p.name == dest.name or leftover_of(p) != dest.name or not abandoned(p):
            continue
        if _LEFTOVER.match(p.name).group("what") == "old" and not os.path.lexists(dest):
            os.rename(p, dest)  # the killed writer had moved the previous version aside: it is still the current one
        else:
            remove(p)
        done.append(p)
    return done


def _tmp_prefix(name: str) -> str:
    return f"{name}.tmp-{HOST}-{os.getpid()}-"


# ------------------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``dest`` only if the block finishes.

    Everything in it is fsynced before the rename. Refuses to replace an existing ``dest`` unless ``overwrite``
    is set, so user output is never clobbered.
    """
    dest = Path(dest)
    sweep(dest)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} already exists; fix: choose another folder or pass overwrite=True")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name), dir=dest.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if dest.exists():
            # Move the old one aside first so a crash between the two renames loses nothing (sweep restores it).
            old = dest.with_name(f"{dest.name}.old-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
            remove(old)
        else:
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on a clean exit it is fsynced and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    fd, tmp = tempfile.mkstemp(prefix="." + _tmp_prefix(path.name), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file via a temporary file, fsync and ``os.replace``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
