"""Crash-safe file writes shared by stored images, checkpoints, saved models, indexes and exports.

Every file the studio keeps is written through :func:`open_write` or :func:`write_file` (the one write helper), and a
file that replaces another through :func:`atomic_path`: a temporary name beside the target, the content fsynced,
``os.replace`` onto the target, then the folder fsynced so the rename itself survives a power cut. A temporary name
says which process wrote it (``.NAME.tmp-<pid>-<random>``), so the start-up check can remove those of processes that
died (``core.disk.remove_temp_files``).

A full disk is an answer the user can act on, not a traceback: :func:`reporting_disk_full` turns ``ENOSPC`` (and a
quota's ``EDQUOT``, and SQLite's "database or disk is full") into :class:`DiskFull`, naming what was being written.
Tests inject it with :func:`inject_disk_full`, which makes the write helper fail as the kernel would.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from core.errors import UserError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TMP_MARK = ".tmp-"  # in every temporary name: ``.NAME.tmp-<pid>-<random>`` (files) or ``NAME.tmp-<pid>-...`` (folders)


class DiskFull(UserError):
    """The disk (or the user's quota) is full; the message names what was being written."""


# ------------------------------------------------------------------------------------------------ the write helper

class _Fault:
    """An injected full disk: writes to paths containing ``match`` fail once ``after`` bytes have gone through."""

    def __init__(self, after: int, match: str) -> None:
        self.left, self.match, self.hits = after, match, 0
        self.lock = threading.Lock()

    def charge(self, path: str, nbytes: int) -> None:
        if self.match not in path:
            return
        with self.lock:
            if nbytes > self.left:
                self.hits += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            self.left -= nbytes


_fault: _Fault | None = None


class _FaultyFile(io.RawIOBase):
    """A file opened for writing whose writes are charged against the injected fault first."""

    def __init__(self, path: str, fault: _Fault) -> None:
        self._fh = open(path, "wb", buffering=0)
        self._path, self._fault = path, fault
        self.name = path

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self._fault.charge(self._path, size)
        return self._fh.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()
            finally:
                self._fh.close()


def open_write(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for writing bytes (truncating it): the one way the studio opens a file it writes."""
    if _fault is not None:
        return io.BufferedWriter(_FaultyFile(os.fspath(path), _fault))
    return open(path, "wb")


def write_file(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` (not atomically: see :func:`atomic_path`), and fsync it unless told not to."""
    try:
        with open_write(path) as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is None:  # a write's error names no file: say which
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise


@contextmanager
def inject_disk_full(after_bytes: int = 0, match: str = "") -> Iterator[_Fault]:
    """For tests: within the block, writes through the helper to paths containing ``match`` fail with ENOSPC once
    ``after_bytes`` bytes have been written (processes forked meanwhile, like the import's decoders, inherit it)."""
    global _fault
    previous, _fault = _fault, _Fault(after_bytes, match)
    try:
        yield _fault
    finally:
        _fault = previous


# ------------------------------------------------------------------------------------------------ durability

def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so that the names created, renamed or removed in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(name: str) -> str:
    """A temporary name for ``name`` that says which process writes it."""
    return f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


@contextmanager
def atomic_path(path: str | Path, what: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it, move it onto ``path`` and fsync the
    folder.

    A reader sees the old file or the new one, never half of one, and after a power cut the rename is there or the
    old file is. On an error the temporary file is removed; a full disk raises :class:`DiskFull` naming ``what``
    (default: the file). A process killed mid-write leaves at most a ``.NAME.tmp-<pid>-*`` file beside the target,
    which the start-up check removes once that process is gone.
    """
    path = Path(path)
    with reporting_disk_full(what or str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(tmp_name(path.name))
        try:
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except Exception:  # not on KeyboardInterrupt: like a kill, it leaves the file to the start-up check
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | Path, data: bytes, what: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path, what) as tmp:
        write_file(tmp, data, fsync=False)  # atomic_path fsyncs it


# ------------------------------------------------------------------------------------------------ a full disk

def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full: ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    return "database or disk is full" in str(orig if orig is not None else exc).lower() and not isinstance(exc, OSError)


def disk_full(exc: BaseException, what: str) -> DiskFull:
    """The :class:`DiskFull` for ``exc`` while writing ``what``: says which file, that earlier work is kept, and what
    to do."""
    where = getattr(exc, "filename", None)
    target = f" ({where})" if where and str(where) not in what else ""
    return DiskFull(f"Disk full: could not write {what}{target}. Nothing was changed and what was saved before is "
                    "kept; free some space on that disk and try again.")


@contextmanager
def reporting_disk_full(what: str) -> Iterator[None]:
    """Run the block; a full disk inside it becomes :class:`DiskFull` naming ``what``. Other errors pass through."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(exc, what) from None
        raise
