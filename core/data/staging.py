"""Staging areas: where an import extracts, decodes and stages its files before its commit moves them into the store.

An area is a folder ``staging/<id>`` that holds ``.lock``, locked (``fcntl.flock``) by the process that made it for as
long as that process lives; the kernel drops the lock when the process dies, however it dies. So a lock anyone can
take is the sign of an abandoned area: the start-up check (``core.startup``) rolls its import back and removes it,
at once rather than after a day. Before its commit an import writes ``commit.json`` (the content hashes it is about
to publish) into its area; rolling back means removing the stored files of those hashes that no row refers to
(``core.store.integrity.collect``): a commit that did not finish left its files without rows, a commit that did
finish left rows, and their files stay. Areas without a lock file (written by an older release) go after a day.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from core import paths
from core.fsutil import write_file

LOCK = ".lock"
COMMIT = "commit.json"
NEW_PREFIX = ".new-"  # an area being made (not yet locked): left alone unless a day old
UNLOCKED_MAX_AGE_S = 24 * 3600

log = logging.getLogger(__name__)
_held: dict[str, int] = {}  # area -> the descriptor holding its lock


def root() -> Path:
    return paths.subdir("staging")


def create(prefix: str = "") -> Path:
    """A new staging area, locked by this process until :func:`remove`."""
    name = f"{prefix}{uuid.uuid4().hex}"
    making = root() / f"{NEW_PREFIX}{name}"
    making.mkdir()
    fd = os.open(making / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    area = root() / name
    os.rename(making, area)  # only now visible as an area: it is locked before anyone can judge it
    _held[str(area)] = fd
    return area


def remove(area: Path) -> None:
    """Remove a staging area of this process and release its lock."""
    shutil.rmtree(area, ignore_errors=True)
    fd = _held.pop(str(area), None)
    if fd is not None:
        os.close(fd)


def write_commit(area: Path, hashes: list[str]) -> None:
    """Record the hashes an import is about to publish (fsynced: it must be there if the commit half-happens)."""
    write_file(area / COMMIT, json.dumps(sorted(set(hashes))).encode())


def _abandoned(entry: Path) -> bool:
    if str(entry) in _held:
        return False
    if entry.name.startswith(NEW_PREFIX) or not (entry / LOCK).exists():
        try:
            return time.time() - entry.stat().st_mtime > UNLOCKED_MAX_AGE_S
        except FileNotFoundError:
            return False
    try:
        fd = os.open(entry / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its process lives
    finally:
        os.close(fd)
    return True


def abandoned() -> list[Path]:
    """The staging areas whose process is gone (and lock-less ones over a day old)."""
    found = []
    for entry in sorted(root().iterdir()):
        try:
            if (entry.is_dir() and _abandoned(entry)) or \
                    (not entry.is_dir() and time.time() - entry.stat().st_mtime > UNLOCKED_MAX_AGE_S):
                found.append(entry)
        except FileNotFoundError:  # its import removed it meanwhile
            pass
    return found


def recover() -> dict[str, int]:
    """Roll back the imports of abandoned areas and remove the areas; returns {"areas", "files"} removed."""
    from core.store import integrity

    areas = files = 0
    for area in abandoned():
        if area.is_dir():
            try:
                hashes = json.loads((area / COMMIT).read_text())
            except (FileNotFoundError, ValueError):
                hashes = []  # died before its commit began: nothing of it is in the store
            if hashes:
                files += integrity.collect(hashes)
            shutil.rmtree(area, ignore_errors=True)
        else:
            area.unlink(missing_ok=True)
        areas += 1
        log.warning("removed the abandoned staging area %s (its import's process is gone)", area.name)
    return {"areas": areas, "files": files}
