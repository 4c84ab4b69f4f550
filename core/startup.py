"""The start-up check: once per process and data directory, the first time the store is used.

``core.store.engine.engine()`` runs it, so every process that uses the store runs it before its first query: the
Streamlit server (its home page or whichever page is opened first), the command line, and each job worker
(``python -m core worker``, one process per job). Steps, with their cost measured on the CI machine (2 cores):

1. The store's integrity: SQLite's ``PRAGMA quick_check`` (page structure, no index-against-table comparison).
   It reads the whole database: measured 1.1 ms per MiB with the file in the page cache, 22 ms per MiB cold (a
   300,000-item store is 124 MiB: 140 ms warm, 2.7 s cold). So it runs at every start while the database is at most
   ``QUICK_CHECK_ALWAYS_BYTES`` (70 ms warm, 1.4 s cold at worst), and for a larger one when the last check, recorded
   in ``studio.db.checked`` beside it, is over a day old. A failed check is logged as an error at every start (the
   server's console, each job's log) and kept in :func:`last_report`; the studio goes on, because SQLite refuses by
   itself the damaged pages a query touches ("database disk image is malformed"), and ``python -m core doctor`` (the
   full ``integrity_check``, exit status 1) must still be able to run and say what is wrong.
2. Interrupted imports: the staging areas of imports whose process is gone are rolled back (their files that no row
   refers to removed) and removed (``core.data.staging.recover``); SQLite itself rolls back their transaction.
3. Clean-up (``core.disk.clean``): temporary files of gone processes, exports and uploads older than
   ``cleanup_after_s``, caches over their budget.

Steps 2 and 3 on an empty data directory: about 2 ms; their cost grows with the number of staging areas, temporary
files and caches, not with the number of images.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

QUICK_CHECK_ALWAYS_BYTES = 64 * 2**20  # databases up to this size are checked at every start (see above)
QUICK_CHECK_EVERY_S = 24 * 3600.0  # larger ones at most this often per data directory

log = logging.getLogger(__name__)
_lock = threading.RLock()
_done: dict[str, dict[str, Any] | None] = {}  # url -> report (None while the check runs in this thread)


def _database(eng: Engine) -> Path | None:
    if eng.dialect.name != "sqlite":
        return None
    db = eng.url.database
    return None if not db or db == ":memory:" else Path(db)


def _store_check(eng: Engine, report: dict[str, Any]) -> None:
    from core.store import integrity

    db = _database(eng)
    if db is None:
        report["quick_check"] = "not needed (server database)"
        return
    size = db.stat().st_size if db.exists() else 0
    stamp = db.with_name(db.name + ".checked")
    if size > QUICK_CHECK_ALWAYS_BYTES:
        try:
            last = json.loads(stamp.read_text())
            if time.time() - float(last["at"]) < QUICK_CHECK_EVERY_S and not last["problems"]:
                report["quick_check"] = f"skipped ({size / 2**20:.0f} MiB, checked in the last day)"
                return
        except (OSError, ValueError, KeyError, TypeError):
            pass
    t0 = time.perf_counter()
    problems = integrity.quick_check()
    report["quick_check"] = "ok" if not problems else problems
    report["quick_check_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    if size > QUICK_CHECK_ALWAYS_BYTES:
        try:
            stamp.write_text(json.dumps({"at": time.time(), "problems": problems}))
        except OSError:
            pass
    if problems:
        report["damaged"] = (f"The store {db} failed its integrity check ({'; '.join(problems[:3])}): run `python -m "
                             "core doctor` to see what is damaged, and restore the data directory from a backup")
        log.error(report["damaged"])


def _run(eng: Engine) -> dict[str, Any]:
    from core import disk
    from core.data import staging

    report: dict[str, Any] = {"pid": os.getpid()}
    t0 = time.perf_counter()
    try:
        _store_check(eng, report)
    except Exception as exc:  # noqa: BLE001 - a database too damaged to check ("file is not a database")
        report["damaged"] = f"The store could not be checked ({type(exc).__name__}: {exc}): run `python -m core doctor`"
        log.error(report["damaged"])
    for step, fn in (("interrupted_imports", staging.recover), ("clean_up", disk.clean)):
        try:
            report[step] = fn()
        except Exception as exc:  # noqa: BLE001 - a clean-up that fails must not stop the studio; say so
            report[step] = f"failed: {type(exc).__name__}: {exc}"
            log.warning("start-up %s failed: %s", step, exc)
    report["ms"] = round(1000 * (time.perf_counter() - t0), 1)
    return report


def check_once(eng: Engine) -> dict[str, Any] | None:
    """Run the start-up check for ``eng`` unless this process ran it already; return its report (None while it runs:
    its own steps use the store)."""
    key = str(eng.url)
    with _lock:
        if key not in _done:
            _done[key] = None  # re-entrant calls see it as running
            _done[key] = _run(eng)
        return _done[key]


def skip(eng: Engine, why: str) -> None:
    """Do not run the check in this process (``python -m core doctor`` reports what the check would change)."""
    with _lock:
        _done.setdefault(str(eng.url), {"skipped": why})


def last_report(eng: Engine) -> dict[str, Any] | None:
    """What this process's start-up check found for ``eng`` (None before it ran)."""
    return _done.get(str(eng.url))


def forget(eng: Engine | None = None) -> None:
    """Run the check again at the next use (of ``eng``, or of every store): after a repair, and for tests."""
    with _lock:
        if eng is None:
            _done.clear()
        else:
            _done.pop(str(eng.url), None)
