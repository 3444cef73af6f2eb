"""Building a cached artefact once: verified on load, built under a lock, rebuilt when damaged.

:func:`obtain` is the one way the kit gets something it caches (an expert, statistics, a transfer set, a zoo
matrix, a converted base, a download):

1. If the artefact is there and matches its manifest (:mod:`fusionkit.core.manifest`), load it - no lock.
2. Otherwise take the artefact's file lock (``filelock``; ``<cache>/.locks/``) and look again: another process
   (a second notebook building the same zoo) may have finished it meanwhile, and then it is reused, never built
   twice or replaced under a reader.
3. An artefact an older kit made without a manifest is adopted if nothing is visibly wrong with it; a damaged
   one is moved aside to ``<cache>/.damaged/`` with a :class:`~fusionkit.core.errors.CacheWarning`.
4. Build it under a temporary name, write its manifest last, fsync, rename into place, release the lock.

A load that fails although the sizes matched (a large file whose bytes rotted) is checked in full; if it is
damaged it is rebuilt the same way, and if it is not, the error is a bug and raises as it is.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from . import manifest
from .cache import atomic_dir, atomic_file, cache_dir, stable_hash
from .errors import CacheError, CacheWarning

T = TypeVar("T")


@dataclass(frozen=True)
class Artefact:
    """A cached thing: where it lives, whether it is a folder or one file, and how to name it to a user."""

    path: Path
    folder: bool
    what: str  # "expert sentiment", for messages
    summary: str = ""  # what made it, in a line (``fusionkit cache list``)


def lock_path(path: str | Path) -> Path:
    """The lock file that guards building ``path`` (one per artefact, outside the artefact's own folder)."""
    return cache_dir(".locks") / f"{stable_hash(str(Path(path).resolve()))}.lock"


@contextlib.contextmanager
def build_lock(path: str | Path, what: str = "", wait: bool = True) -> Iterator[None]:
    """Hold ``path``'s build lock. A second process waits (saying once for what); with ``wait=False`` it raises
    :class:`CacheError` instead (``fusionkit cache prune`` skips what is being built)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(path)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise CacheError(f"{path} is being built by another process; fix: try again when it is done") from None
        print(f"fusionkit: waiting for another process that is building {what or path}", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def lookup(art: Artefact, load: Callable[[Path], T], digests: str = "cheap") -> T | None:
    """The artefact loaded if it is there and sound, else None (nothing is built, locked or moved)."""
    if not manifest.status(art.path, art.folder, digests).ok:
        return None
    try:
        value = load(art.path)
    except Exception:
        if manifest.status(art.path, art.folder, "all").ok:
            raise  # the files are what was written: a bug, not damage
        return None
    manifest.touch(art.path, art.folder)
    return value


def obtain(art: Artefact, load: Callable[[Path], T], build: Callable[[Path], T], digests: str = "cheap",
           adopt: Callable[[Path], str | None] | None = None) -> T:
    """The artefact, loaded if sound, else built once (see the module). ``build(tmp)`` writes it at the
    temporary path ``tmp`` (a folder, or a file path) and returns the value (None: ``load`` it once it is in
    place); ``adopt(path)`` says what is wrong with an artefact that has no manifest (default:
    :func:`~fusionkit.core.manifest.structure_problem`). ``load`` never returns None."""
    value = lookup(art, load, digests)
    if value is not None:
        return value
    with build_lock(art.path, art.what):
        found = manifest.status(art.path, art.folder, digests)
        if found.ok:  # built or repaired by another process while this one waited
            value = lookup(art, load, digests)
            if value is not None:
                return value
            found = manifest.Status("damaged", "it does not load")
        if found.state == "unmanaged":
            problem = (adopt or (lambda p: manifest.structure_problem(p, art.folder)))(art.path)
            if problem is None:
                manifest.record(art.path, art.folder, art.summary, adopted=True)
                return load(art.path)
            found = manifest.Status("damaged", problem)
        if found.state == "damaged":
            aside = manifest.move_aside(art.path, art.folder)
            warnings.warn(f"{art.what} at {art.path} was damaged ({found.reason}); moved it to {aside} and "
                          "building it again", CacheWarning, stacklevel=3)
        if art.folder:
            with atomic_dir(art.path, overwrite=True) as tmp:
                value = build(tmp)
                manifest.record(tmp, True, art.summary)
        else:
            with atomic_file(art.path) as tmp:
                value = build(tmp)
            manifest.record(art.path, False, art.summary)
    return load(art.path) if value is None else value


def guard(art: Artefact, read: Callable[[Path], T]) -> T:
    """Read from an artefact obtained earlier; if the read fails because its files are now damaged or gone,
    move it aside (so the next request rebuilds it) and fail in one line."""
    try:
        return read(art.path)
    except Exception:
        found = manifest.status(art.path, art.folder, "all")
        if found.ok or found.state == "unmanaged":
            raise
        if found.state == "damaged":
            with contextlib.suppress(OSError, CacheError):
                with build_lock(art.path, art.what, wait=False):
                    manifest.move_aside(art.path, art.folder)
        raise CacheError(f"{art.what} at {art.path} is {found.state}{f' ({found.reason})' if found.reason else ''}; "
                         "fix: run the same step again - the kit builds it again") from None
