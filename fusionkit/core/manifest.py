"""Manifests: what a finished artefact consists of, so that loading can tell a sound one from a damaged one.

Every artefact the kit writes - a folder (an expert, a converted base, a merged model) or a single file
(statistics, a transfer set, a zoo matrix, a download) - gets a manifest: each file's name, size, sha256 and the
mtime it had when written, plus a one-line summary of what made it. It is written last and atomically, so an
artefact without one was never finished (or predates manifests). A folder's manifest is ``.manifest.json`` inside
it, so it travels with the folder; a single file's lives at ``<cache>/.manifests/<its path>.json``, so the file
stays byte for byte what safetensors or json expects and its folder holds nothing else.

Checking costs a stat per file and catches truncation always: sizes are always compared. A file's sha256 is
compared when the file is small (``CHEAP_BYTES``) or its mtime is not the recorded one (something wrote to it
since); the digest of a large untouched file is left to ``fusionkit cache verify`` (``digests="all"``), which
is also how bit rot that kept the mtime is found. The cheap check hashes a file once per process per (size,
mtime, inode); ``"all"`` always reads the bytes again.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, leftover_of, read_json, remove, sha256_file, write_json
from .errors import CacheError

FORMAT = 1
MANIFEST = ".manifest.json"
CHEAP_BYTES = 16 << 20  # files up to this size are hashed on every load
_DIGESTS: dict[tuple, str] = {}


@dataclass(frozen=True)
class Status:
    """``state``: "ok", "missing", "unmanaged" (files but no manifest) or "damaged" (``reason`` says how)."""

    state: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def _in_cache(path: Path) -> Path | None:
    """``path`` relative to the cache root, or None when it lies elsewhere (a user's output)."""
    try:
        return Path(path).resolve().relative_to(cache_root().resolve())
    except ValueError:
        return None


def manifest_path(path: str | os.PathLike, folder: bool) -> Path:
    path = Path(path)
    if folder:
        return path / MANIFEST
    rel = _in_cache(path)
    if rel is None:
        return path.with_name(f".{path.name}.manifest.json")
    return cache_root() / ".manifests" / f"{rel}.json"


def _digest(path: Path, st: os.stat_result, fresh: bool = False) -> str:
    """sha256 of a file, remembered per (path, size, mtime, inode); ``fresh`` reads the bytes again regardless."""
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if fresh or key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def files_of(path: Path, folder: bool) -> dict[str, Path]:
    """The artefact's files by their name in the manifest (folders: relative paths, without the manifest)."""
    if not folder:
        return {path.name: path}
    return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != MANIFEST and leftover_of(p) is None}


def record(path: str | os.PathLike, folder: bool, summary: str = "", **extra) -> dict:
    """Hash the artefact's files and write its manifest (atomically; call it when everything else is written)."""
    path = Path(path)
    files = {}
    for rel, p in files_of(path, folder).items():
        st = p.stat()
        files[rel] = {"size": st.st_size, "sha256": _digest(p, st), "mtime_ns": st.st_mtime_ns}
    manifest = {"format": FORMAT, "summary": summary, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "files": files, **extra}
    write_json(manifest_path(path, folder), manifest)
    return manifest


def read(path: str | os.PathLike, folder: bool) -> dict | None:
    """The manifest, or None if it is missing or unreadable."""
    try:
        m = read_json(manifest_path(path, folder))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def status(path: str | os.PathLike, folder: bool, digests: str = "cheap", under: str = "") -> Status:
    """Whether the artefact at ``path`` is whole. ``digests``: "cheap" (see the module), "all" or "none";
    ``under`` checks only the files below that sub-folder of a folder artefact."""
    path = Path(path)
    if not (path.is_dir() if folder else path.is_file()):
        return Status("missing")
    mpath = manifest_path(path, folder)
    try:
        m = read_json(mpath)
        files = m["files"]
        assert isinstance(files, dict)
    except FileNotFoundError:
        return Status("unmanaged", "it has no manifest")
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return Status("damaged", f"its manifest {mpath} is unreadable")
    base = path if folder else path.parent
    stale = []
    for rel, want in files.items():
        if under and not rel.startswith(under.rstrip("/") + "/"):
            continue
        p = base / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            return Status("damaged", f"{rel} is missing")
        if st.st_size != want["size"]:
            return Status("damaged", f"{rel} is {st.st_size:,} bytes, its manifest says {want['size']:,}")
        moved = st.st_mtime_ns != want.get("mtime_ns")
        if digests == "all" or (digests == "cheap" and (moved or st.st_size <= CHEAP_BYTES)):
            if _digest(p, st, fresh=digests == "all") != want["sha256"]:
                return Status("damaged", f"{rel} does not match the sha256 in its manifest")
            if moved:
                stale.append((rel, st.st_mtime_ns))
    if stale and _in_cache(mpath) is not None:
        # Same bytes, new mtime (a copy without -p): remember it, so the next load need not hash it again.
        for rel, mtime in stale:
            files[rel]["mtime_ns"] = mtime
        with contextlib.suppress(OSError):
            write_json(mpath, m)
    return Status("ok")


def touch(path: str | os.PathLike, folder: bool) -> None:
    """Mark the artefact as used now (its manifest's mtime is its "last used" in ``fusionkit cache list``)."""
    with contextlib.suppress(OSError):
        os.utime(manifest_path(path, folder))


def structure_problem(path: str | os.PathLike, folder: bool) -> str | None:
    """For an artefact without a manifest: what is visibly wrong with it (a safetensors file shorter than its
    header says, a JSON file that does not parse, no files at all), or None if nothing is."""
    files = files_of(Path(path), folder)
    if not files:
        return "it holds no files"
    for rel, p in files.items():
        try:
            if p.suffix == ".safetensors":
                problem = _safetensors_problem(p)
                if problem:
                    return f"{rel} {problem}"
            elif p.suffix == ".json":
                json.loads(p.read_text())
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{rel} does not parse ({type(e).__name__})"
    return None


def _safetensors_problem(p: Path) -> str | None:
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            return f"is {size:,} bytes, shorter than its header"
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"is {size:,} bytes, its header needs {8 + n + end:,}"
    return None


def move_aside(path: str | os.PathLike, folder: bool) -> Path:
    """Move a damaged cache artefact to ``<cache>/.damaged/`` (kept for a look; ``fusionkit cache prune``
    deletes it) so that its name is free for a rebuild."""
    path = Path(path)
    rel = _in_cache(path)
    if rel is None:
        raise CacheError(f"{path} is not in the cache; the kit moves aside only what it can rebuild")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = cache_root() / ".damaged" / rel.parent / f"{rel.name}.damaged-{stamp}-{uuid.uuid4().hex[:8]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    mpath = manifest_path(path, folder)
    os.rename(path, dest)
    if not folder:
        remove(mpath)
    return dest


def check_output(path: str | os.PathLike) -> None:
    """Raise a one-line :class:`CacheError` if a folder the kit wrote outside the cache (a merged model, or one
    task's folder inside it) no longer matches its manifest. Folders without a manifest pass unchecked."""
    path = Path(path)
    for root, under in ((path, ""), (path.parent, path.name)):
        if (root / MANIFEST).is_file():
            s = status(root, True, "cheap", under)
            if s.state == "damaged":
                fix = (read(root, True) or {}).get("fix") or "make it again"
                raise CacheError(f"{path} is damaged: {s.reason}; fix: {fix}")
            return
