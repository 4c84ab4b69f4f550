"""Disk use of the data directory: the caches' budget, and removing what nothing needs any more.

Caches (``paths.subdir("cache")``): the training pipeline's decoded pixels (``images-ds<id>-v<version>-...``) and
frozen-backbone features (``features-ds<id>-...``) per dataset version, and the embeddings an index build keeps to
resume (``index-*``). They are rebuilt on demand, so they live under one budget, the setting ``cache_max_bytes``
(0: ``cache_max_fraction`` of what the disk has free plus what the caches hold already); the least recently used go
first. A cache is "used" when it is opened (:func:`touch`), and one used in the last ``IN_USE_S`` seconds is never
evicted (a job may be about to map it). A dataset's caches go with it (:func:`remove_dataset_caches`).

Exports and uploads are working copies for a browser download or an import, and temporary files (``*.tmp-<pid>-*``,
``core.fsutil``) belong to a write in progress: those older than ``cleanup_after_s`` (a day), and the temporary
files of processes that are gone, are removed by the start-up check (:func:`clean`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from core import paths, settings
from core.fsutil import TMP_MARK

IN_USE_S = 600.0  # a cache opened this recently is in use: never evicted
TEMP_MIN_AGE_S = 3600.0  # a temporary file is this old before its writer's death is believed (pid namespaces differ)
CACHE_KINDS = {"images": "decoded pixels", "features": "backbone features", "index": "index build",
               "embeddings": "dataset embeddings (quality, evaluation baselines)"}
_DATASET_RE = re.compile(r"^(?:images|features|embeddings)-ds(\d+)-")
_TMP_PID_RE = re.compile(re.escape(TMP_MARK) + r"(\d+)(?:-|$)")
# Folders whose temporary files the start-up check looks for, and how deep (blobs and thumbs only ever receive
# renamed files, and are too large to walk at every start).
TEMP_DIRS = {"models": 2, "indexes": 2, "cache": 1, "jobs": 4, "runs": 3, "exports": 1, "uploads": 1, "weights": 1}

log = logging.getLogger(__name__)


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is gone)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def free_bytes() -> int:
    """Bytes free on the disk that holds the data directory (what an unprivileged user may use)."""
    return shutil.disk_usage(paths.home()).free


# ------------------------------------------------------------------------------------------------ caches

def touch(folder: Path) -> None:
    """Mark a cache as used now (its folder's modification time is its last use)."""
    try:
        os.utime(folder)
    except FileNotFoundError:
        pass


def caches() -> list[dict[str, Any]]:
    """Every cache: name, kind, dataset id (when it has one), bytes, last used (UNIX time), path; oldest first."""
    out = []
    for entry in paths.subdir("cache").iterdir():
        if TMP_MARK in entry.name:
            continue  # being built
        kind = entry.name.split("-", 1)[0]
        match = _DATASET_RE.match(entry.name)
        try:
            used = entry.stat().st_mtime
        except FileNotFoundError:
            continue
        out.append({"name": entry.name, "kind": CACHE_KINDS.get(kind, kind), "dataset_id": int(match.group(1))
                    if match else None, "bytes": tree_bytes(entry), "last_used": used, "path": str(entry)})
    return sorted(out, key=lambda c: c["last_used"])


def cache_budget(cache_bytes: int | None = None) -> int:
    """The bytes the caches may hold: ``cache_max_bytes``, else ``cache_max_fraction`` of free space plus the caches'
    own size (what they could hold if they were the only thing left to grow)."""
    fixed = settings.get("cache_max_bytes")
    if fixed:
        return int(fixed)
    held = sum(c["bytes"] for c in caches()) if cache_bytes is None else cache_bytes
    return int(settings.get("cache_max_fraction") * (free_bytes() + held))


def enforce_cache_budget(keep: Path | None = None) -> list[str]:
    """Evict the least recently used caches until the rest fit the budget; returns the names evicted.

    ``keep`` (the cache just built) and caches used within ``IN_USE_S`` stay even over budget.
    """
    found = caches()
    total = sum(c["bytes"] for c in found)
    budget = cache_budget(total)
    evicted: list[str] = []
    now = time.time()
    for c in found:  # oldest first
        if total <= budget:
            break
        if (keep is not None and Path(c["path"]) == Path(keep)) or now - c["last_used"] < IN_USE_S:
            continue
        _remove(Path(c["path"]))
        total -= c["bytes"]
        evicted.append(c["name"])
    if evicted:
        log.info("cache budget %d bytes: evicted %s", budget, ", ".join(evicted))
    return evicted


def remove_dataset_caches(ds_id: int) -> list[str]:
    """Remove every cache of the dataset with id ``ds_id`` (all its versions); returns their names. Called by the
    store when it deletes the dataset (not a service: no user acts here)."""
    gone = []
    for entry in paths.subdir("cache").iterdir():
        match = _DATASET_RE.match(entry.name)
        if match and int(match.group(1)) == int(ds_id):
            _remove(entry)
            gone.append(entry.name)
    return gone


def remove_index_folder(path: str | Path) -> None:
    """Remove an index's folder, only ever one under ``indexes/`` of this data directory."""
    folder = Path(path)
    if folder.is_dir() and paths.subdir("indexes").resolve() in folder.resolve().parents:
        shutil.rmtree(folder, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ clean-up

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_files(max_age_s: float | None = None) -> list[Path]:
    """Temporary files and folders (``*.tmp-<pid>-*``) whose writer is gone (and that are over ``TEMP_MIN_AGE_S``
    old: a writer in another container's pid namespace looks gone from here), or older than ``max_age_s`` (default
    ``cleanup_after_s``): another machine's process sharing the folder cannot be asked whether it lives."""
    max_age_s = settings.get("cleanup_after_s") if max_age_s is None else max_age_s
    now, found = time.time(), []
    home = paths.home()
    for sub, depth in TEMP_DIRS.items():
        top = home / sub
        if not top.is_dir():
            continue
        for dirpath, dirs, files in os.walk(top):
            level = len(Path(dirpath).relative_to(top).parts)
            for name in files + dirs:
                match = _TMP_PID_RE.search(name)
                if not match:
                    continue
                path = Path(dirpath, name)
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > max_age_s or (age > TEMP_MIN_AGE_S and not _pid_alive(int(match.group(1)))):
                    found.append(path)
            dirs[:] = [d for d in dirs if not _TMP_PID_RE.search(d)] if level < depth else []
    return found


def expired(sub: str, max_age_s: float | None = None) -> list[Path]:
    """Entries of ``exports/`` or ``uploads/`` not modified for ``max_age_s`` (default ``cleanup_after_s``)."""
    max_age_s = settings.get("cleanup_after_s") if max_age_s is None else max_age_s
    folder = paths.home() / sub
    if not folder.is_dir():
        return []
    cutoff = time.time() - max_age_s
    out = []
    for entry in folder.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                out.append(entry)
        except FileNotFoundError:
            pass
    return out


def clean() -> dict[str, int]:
    """Remove temporary files of gone processes, exports and uploads over ``cleanup_after_s`` old, and caches over the
    budget; returns how many of each went."""
    report = {"temp_files": 0, "exports": 0, "uploads": 0, "caches": 0}
    for path in temp_files():
        _remove(path)
        report["temp_files"] += 1
    for sub in ("exports", "uploads"):
        for path in expired(sub):
            _remove(path)
            report[sub] += 1
    report["caches"] = len(enforce_cache_budget())
    if any(report.values()):
        log.info("clean-up of %s on %s: %s", paths.home(), socket.gethostname(), report)
    return report
