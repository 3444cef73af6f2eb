"""What is in the cache, whether it is whole, and reclaiming space: ``fusionkit cache list|verify|prune``.

The cache's layout is found, not declared: an entry's *kind* is its top-level folder (``experts``, ``stats``,
``models``, ...); an artefact is a folder with a ``.manifest.json`` or a file with a manifest in
``<cache>/.manifests/`` (:mod:`fusionkit.core.manifest`). Artefacts from before manifests are listed too: a plain
file in a kind's folder, or a folder of files one level further down. *Leftovers* are the temporaries of
unfinished writes (``*.tmp-*``, ``*.old-*``); *damaged* entries are what loading moved to ``<cache>/.damaged/``.
"Last used" is the manifest's mtime, which every verified load touches.

``prune`` always removes damaged entries and leftovers whose writer is gone; ``--kind``, ``--older-than`` and
``--max-size`` (least recently used first) choose artefacts. Nothing being built (its lock held) is removed.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from . import manifest
from .artefacts import build_lock
from .cache import abandoned, cache_root, disk_usage, leftover_of, remove, sweep
from .errors import CacheError

NO_MANIFEST = "(no manifest: made before manifests, or by other code)"
_DAMAGED = re.compile(r"\.damaged-\d{8}T\d{6}-[0-9a-f]{8}$")
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SECONDS = {"": 86400, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Entry:
    """One thing in the cache. ``role``: "artefact", "leftover" (``state`` "abandoned" or "in progress") or
    "damaged"."""

    kind: str
    path: Path
    folder: bool
    size: int
    last_used: float
    summary: str
    role: str = "artefact"
    managed: bool = True
    state: str = ""

    @property
    def rel(self) -> str:
        try:
            return self.path.relative_to(cache_root()).as_posix()
        except ValueError:
            return str(self.path)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(path=str(self.path), rel=self.rel, last_used=time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                            time.localtime(self.last_used)))
        return d


def _mtime(path: Path) -> float:
    try:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] or [path]
        return max(p.stat().st_mtime for p in files)
    except OSError:
        return 0.0


def _artefact(path: Path, kind: str, folder: bool) -> Entry:
    m = manifest.read(path, folder)
    used = _mtime(manifest.manifest_path(path, folder)) if m else _mtime(path)
    return Entry(kind, path, folder, disk_usage(path), used, (m or {}).get("summary") or NO_MANIFEST,
                 managed=m is not None)


def _leftover(path: Path, kind: str) -> Entry:
    return Entry(kind, path, path.is_dir(), disk_usage(path), _mtime(path), f"unfinished write of {leftover_of(path)}",
                 role="leftover", managed=False, state="abandoned" if abandoned(path) else "in progress")


def _walk(folder: Path, kind: str, depth: int) -> list[Entry]:
    if (folder / manifest.MANIFEST).is_file():
        return [_artefact(folder, kind, True)]
    found, plain = [], []
    for child in sorted(folder.iterdir()):
        if leftover_of(child) is not None:
            found.append(_leftover(child, kind))
        elif child.name.startswith("."):
            continue
        elif child.is_dir():
            found += _walk(child, kind, depth + 1)
        elif child.is_file():
            plain.append(child)
    managed = [p for p in plain if manifest.manifest_path(p, False).is_file()]
    if depth >= 2 and plain and not managed and all(e.role == "leftover" for e in found):
        return [_artefact(folder, kind, True)] + found  # a whole folder from before manifests
    return found + [_artefact(p, kind, False) for p in plain]


def scan(kinds: list[str] | None = None) -> list[Entry]:
    """Every artefact, leftover and damaged entry in the cache (an absent cache is an empty one)."""
    root = cache_root()
    entries = []
    if root.is_dir():
        for top in sorted(root.iterdir()):
            if top.name == ".damaged":
                entries += [Entry(p.relative_to(top).parts[0], p, p.is_dir(), disk_usage(p), _mtime(p),
                                  "moved aside when found damaged", role="damaged", managed=False)
                            for p in sorted(top.rglob("*")) if _DAMAGED.search(p.name)]
            elif top.is_dir() and not top.name.startswith("."):
                entries += _walk(top, top.name, 1)
    return [e for e in entries if not kinds or e.kind in kinds]


# --------------------------------------------------------------------------------------------- verify
def verify(kinds: list[str] | None = None, paths: list[str] | None = None, move_aside: bool = False) -> list[dict]:
    """Hash every file of every artefact (and of the folders in ``paths``, e.g. merged models) against its manifest.
    Artefacts without one get the structural check. ``move_aside`` moves damaged cache artefacts to
    ``<cache>/.damaged/`` so the kit rebuilds them when next asked."""
    rows = []
    for e in scan(kinds):
        if e.role != "artefact":
            continue
        if e.managed:
            s = manifest.status(e.path, e.folder, "all")
        else:
            problem = manifest.structure_problem(e.path, e.folder)
            s = manifest.Status("damaged", problem) if problem else manifest.Status("unmanaged", "no manifest to check")
        row = {**e.to_dict(), "state": s.state, "reason": s.reason}
        if s.state == "damaged" and move_aside:
            try:
                with build_lock(e.path, wait=False):
                    row["moved_to"] = str(manifest.move_aside(e.path, e.folder))
            except CacheError as err:
                row["moved_to"] = f"not moved: {err}"
        rows.append(row)
    for p in map(Path, paths or []):
        folder = p.is_dir()
        s = manifest.status(p, folder, "all")
        if s.state == "unmanaged" and folder and (p.parent / manifest.MANIFEST).is_file():
            s = manifest.status(p.parent, True, "all", under=p.name)  # one task's folder of a merged model
        rows.append({"kind": "outside", "rel": str(p), "path": str(p), "size": disk_usage(p), "state": s.state,
                     "reason": s.reason or ("no such file or folder" if s.state == "missing" else ""),
                     "summary": (manifest.read(p, folder) or {}).get("summary", "")})
    return rows


# --------------------------------------------------------------------------------------------- prune
def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise CacheError(f"cannot read size {text!r}; fix: write it like 500MB, 2GB or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_age(text: str) -> float:
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SECONDS:
        raise CacheError(f"cannot read age {text!r}; fix: write it like 30d, 12h, 2w (a bare number is days)")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def _choose(pool: list[Entry], kinds, older_than: float | None, max_bytes: int | None) -> dict[Path, tuple]:
    now, chosen = time.time(), {}
    if older_than is not None:
        for e in pool:
            if now - e.last_used > older_than:
                chosen[e.path] = (e, f"last used {format_age(now - e.last_used)} ago")
    if max_bytes is not None:
        left = sorted((e for e in pool if e.path not in chosen), key=lambda e: e.last_used)
        total = sum(e.size for e in left)
        for e in left:
            if total <= max_bytes:
                break
            chosen[e.path] = (e, f"least recently used, over the {format_size(max_bytes)} budget")
            total -= e.size
    if kinds and older_than is None and max_bytes is None:
        chosen = {e.path: (e, f"kind {e.kind}") for e in pool}
    return chosen


def _delete(e: Entry) -> None:
    if e.folder:
        trash = cache_root() / ".trash" / uuid.uuid4().hex
        trash.parent.mkdir(exist_ok=True)
        os.rename(e.path, trash)  # gone from its name at once; the bytes follow
        shutil.rmtree(trash, ignore_errors=True)
    else:
        remove(e.path)
        if e.role == "artefact":
            remove(manifest.manifest_path(e.path, False))


def prune(kinds: list[str] | None = None, older_than: float | None = None, max_bytes: int | None = None,
          dry_run: bool = False) -> list[dict]:
    """Remove damaged entries, abandoned leftovers and the artefacts chosen by kind / age / size budget."""
    entries = scan()
    rows = [(e, "moved aside when found damaged" if e.role == "damaged" else "temporary of a write that died")
            for e in entries if e.role == "damaged" or (e.role == "leftover" and e.state == "abandoned")]
    pool = [e for e in entries if e.role == "artefact" and (not kinds or e.kind in kinds)]
    rows += list(_choose(pool, kinds, older_than, max_bytes).values())
    out = []
    for e, why in rows:
        action = "would remove" if dry_run else "removed"
        if not dry_run:
            dest = e.path.with_name(leftover_of(e.path)) if e.role == "leftover" else e.path
            try:
                with build_lock(dest, wait=False):
                    if e.role == "leftover":
                        sweep(dest)  # a killed overwrite's moved-aside original comes back if it is the only copy
                    else:
                        _delete(e)
            except CacheError:
                action = "kept: being built"
        out.append({**e.to_dict(), "why": why, "action": action})
    if not dry_run:
        _tidy()
    return out


def _tidy() -> None:
    """Drop manifests whose file is gone and folders left empty (never a kind's own folder)."""
    root = cache_root()
    side = root / ".manifests"
    if side.is_dir():
        for m in side.rglob("*.json"):
            if not (root / m.relative_to(side).with_suffix("")).exists():
                remove(m)
    for top in [p for p in root.iterdir() if p.is_dir() and p.name != ".locks"] if root.is_dir() else []:
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()


# --------------------------------------------------------------------------------------------- text
def format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def format_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return "<1 min"


def _age(row: dict) -> str:
    used = time.mktime(time.strptime(row["last_used"], "%Y-%m-%dT%H:%M:%S"))
    return f"{format_age(time.time() - used)} ago"


def _table(rows: list[dict], first: str, last) -> list[str]:
    return [f"{first.format(**r):<14} {r['kind']:<10} {format_size(r['size']):>9}  {r['rel']}  {last(r)}" for r in rows]


def format_list(rows: list[dict]) -> str:
    """``fusionkit cache list``: kind, size, last used, where, and what made it."""
    def what(r):
        return r["summary"] if r["role"] == "artefact" else f"[{r['role']}{', ' + r['state'] if r['state'] else ''}] " \
                                                              f"{r['summary']}"
    lines = [f"{'last used':<14} {'kind':<10} {'size':>9}  path (in {cache_root()})  what"]
    lines += _table([{**r, "used": _age(r)} for r in rows], "{used}", what)
    garbage = [r for r in rows if r["role"] != "artefact"]
    lines.append(f"{len(rows) - len(garbage)} artefacts, {format_size(sum(r['size'] for r in rows))} in all"
                 + (f"; {len(garbage)} leftovers or damaged entries ({format_size(sum(r['size'] for r in garbage))}): "
                    "`fusionkit cache prune` removes them" if garbage else ""))
    return "\n".join(lines)


def format_verify(rows: list[dict]) -> str:
    """``fusionkit cache verify``: one line per artefact, damaged ones with the reason."""
    def reason(r):
        return r["reason"] + (f"; {r['moved_to']}" if r.get("moved_to") else "") if r["state"] != "ok" else ""
    bad = [r for r in rows if r["state"] in ("damaged", "missing")]
    hint = ""
    if any(r["kind"] != "outside" for r in bad):
        hint += "; the kit rebuilds a damaged cache artefact when next asked for it (--move-aside: now)"
    if any(r["kind"] == "outside" for r in bad):
        hint += "; folders outside the cache are not rebuilt: make them again"
    return "\n".join(_table(rows, "{state}", reason) + [f"{len(rows)} checked, {len(bad)} damaged or missing{hint}"])


def format_prune(rows: list[dict], dry_run: bool) -> str:
    """``fusionkit cache prune``: what went (or, with --dry-run, would go) and why."""
    gone = sum(r["size"] for r in rows if r["action"] != "kept: being built")
    verb = "would free" if dry_run else "freed"
    return "\n".join(_table(rows, "{action}", lambda r: r["why"])
                     + [f"{len(rows)} entries, {verb} {format_size(gone)}" if rows else "nothing to prune"])
