"""Where fusionkit keeps files, and how it writes them so nothing half-made is ever taken as finished.

Everything the kit builds (converted models, corpora, experts, zoo score tables) lives under one cache
directory: ``$FUSIONKIT_CACHE`` or ``~/.cache/fusionkit``. Entries are named by a content hash of the
recipe that made them, so asking for the same thing twice returns the first result at once.

Writes are atomic: a file or folder is built under a temporary name beside its destination and renamed
into place only when complete (``os.replace``/``os.rename`` are atomic on one filesystem). An interrupted
run leaves at most a ``*.tmp-*`` folder that no lookup will ever return.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import CacheError, OutputExistsError


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache root (or a sub-folder of it), created on first use and checked for writability."""
    root = Path(os.environ.get("FUSIONKIT_CACHE") or Path.home() / ".cache" / "fusionkit").expanduser()
    path = root.joinpath(*parts)
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


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``dest`` only if the block finishes.

    Refuses to replace an existing ``dest`` unless ``overwrite`` is set, so user output is never clobbered.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} already exists; fix: choose another folder or pass overwrite=True")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            # Move the old one aside first so a crash between the two renames loses nothing.
            old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
