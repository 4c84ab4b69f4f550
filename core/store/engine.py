"""One engine per data directory, its schema brought to the newest revision (``core.store.migrate``) on first use.

Transactions, as every store module uses them:

- :func:`transaction` is a write transaction. On SQLite it opens with ``BEGIN IMMEDIATE``: it takes the database's
  one write lock before its first read, so what it reads stays true until it commits. With the driver's deferred
  transactions two processes relabelling one dataset each read the concepts, then one inserted a concept the other
  had just created (UNIQUE failed) or labelled with one the other had just dropped (FOREIGN KEY failed). Waiting for
  the lock is SQLite's busy timeout (``BUSY_TIMEOUT_S``), then up to ``RETRIES`` more attempts, each after a random
  pause (jitter, so waiting writers do not wake in step); the lock is only ever waited for at BEGIN, never half-way
  through. A caller that still gets no lock gets :class:`StoreBusy`, a plain message, never "database is locked".
  On PostgreSQL the same single-writer rule is a transaction-scoped advisory lock, so one test covers both.
- :func:`read` is a read-only snapshot (plain ``BEGIN``): under WAL it neither waits for writers nor blocks them.

Durability: WAL with ``synchronous=FULL``. NORMAL (the former level) is safe against a crashed process but lets a
power cut undo the last commits: an import the user was told had succeeded could vanish. FULL syncs the WAL at every
commit; measured on this project's CI machine at 0.44 ms per commit against 0.01 ms, which a studio's commits
(imports, labels, a heartbeat a second per job) never notice. Files a commit publishes are fsynced, and the folders
that receive them, before it (``core.fsutil``, ``core.store.datasets.commit_import``).
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import paths, settings
from core.errors import UserError
from core.store.migrate import upgrade

BUSY_TIMEOUT_S = 10.0  # SQLite waits this long for the write lock at each attempt
RETRIES = 5  # attempts after the first, each after a random pause of up to RETRY_PAUSE_S
RETRY_PAUSE_S = 0.5
BEGIN_OPTION = "store_begin"  # execution option: "IMMEDIATE" (write), "DEFERRED" (default) or "manual"
_PG_WRITE_LOCK = 0x44545354_57524954  # "DTST" "WRIT": the one advisory lock every studio writer takes

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_writing = threading.local()  # .active: this thread is inside a write transaction


class StoreBusy(UserError):
    """The store's write lock stayed taken through every attempt: another process writes for a long time."""


def _url() -> str:
    return settings.get("db_url") or f"sqlite:///{paths.home() / 'studio.db'}"


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # the driver's own implicit BEGIN is off: _sqlite_begin says which one
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")  # first: the pragmas below may wait too
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
    if mode != "manual":
        conn.exec_driver_sql(f"BEGIN {mode}")


def engine(check: bool = True) -> Engine:
    """The engine for the current ``DEEPTRAIN_HOME`` (or ``DEEPTRAIN_DB_URL``), its schema upgraded once per process.

    ``check``: run the start-up check (``core.startup``) once per process and data directory: store integrity,
    interrupted imports, orphaned temporary files. ``python -m core doctor`` opens the store without it, to report
    rather than refuse.
    """
    url = _url()
    eng = _engines.get(url)
    if eng is None:
        with _lock:
            eng = _engines.get(url)
            if eng is None:
                if url.startswith("sqlite"):
                    eng = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
                    sa.event.listen(eng, "connect", _sqlite_connect)
                    sa.event.listen(eng, "begin", _sqlite_begin)
                else:
                    eng = sa.create_engine(url, pool_pre_ping=True)
                upgrade(eng)
                _engines[url] = eng
    if check:
        from core import startup

        startup.check_once(eng)
    return eng


def _busy(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


@contextmanager
def transaction() -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any error; see the module's docstring.

    Raises:
        StoreBusy: the write lock could not be had within ``(RETRIES + 1) * BUSY_TIMEOUT_S`` seconds and the pauses.
        RuntimeError: this thread is inside a write transaction already: a second one would wait for the first's lock
            until StoreBusy; pass the open connection on instead.
    """
    if getattr(_writing, "active", False):
        raise RuntimeError("a write transaction inside another one waits for itself: use the open connection")
    eng = engine()
    conn = eng.connect()
    try:
        for attempt in range(RETRIES + 1):
            try:
                conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
                trans = conn.begin()
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITE_LOCK})
                break
            except sa.exc.OperationalError as exc:
                if not _busy(exc):
                    raise
                conn.close()
                if attempt == RETRIES:
                    raise StoreBusy(f"The store {eng.url.database or eng.url} stayed busy: another process held its "
                                    f"write lock for over {(RETRIES + 1) * BUSY_TIMEOUT_S:.0f} s; try again in a "
                                    "moment") from None
                time.sleep(random.uniform(0.0, RETRY_PAUSE_S))
                conn = eng.connect()
        _writing.active = True
        try:
            yield conn
        except BaseException:
            trans.rollback()
            raise
        finally:
            _writing.active = False
        trans.commit()
    finally:
        conn.close()


@contextmanager
def read() -> Iterator[Connection]:
    """A read-only snapshot of the store: every query inside sees the same committed state; nothing is written."""
    with engine().connect() as conn:
        yield conn


def now() -> float:
    return time.time()
