"""One engine per data directory, its schema brought to the newest revision (``core.store.migrate``) on first use.

Transactions, as every store module uses them:

- :func:`transaction` is a write transaction. On SQLite it opens with ``BEGIN IMMEDIATE``: it takes the database's
  one write lock before its first read, so what it reads stays true until it commits. With the driver's deferred
  transactions two processes relabelling one dataset each read the concepts, then one inserted a concept the other
  had just created (UNIQUE failed) or labelled with one the other had just dropped (FOREIGN KEY failed). Waiting for
  the lock is SQLite's busy timeout (``BUSY_TIMEOUT_S``), then up to ``RETRIES`` more attempts, each after a random
  pause (jitter, so waiting writers do not wake in step); the lock is only ever waited for at BEGIN, never half-way
  through. A caller that still gets no lock gets :class:`StoreBusy`, a plain message, never "database is locked".
- On PostgreSQL the same rule holds with the server's locks. A write transaction runs at READ COMMITTED (set
  explicitly: a server whose default is REPEATABLE READ or SERIALIZABLE would take the snapshot at the first
  statement, before the lock is held) and first takes the studio's write lock, a transaction-scoped advisory lock,
  so every statement after it sees what the writer before it committed: the store's read-then-write code (concepts
  created where missing, a name checked then inserted, a job's history read and extended) keeps the guarantee
  ``BEGIN IMMEDIATE`` gives it. Every lock wait is bounded by ``lock_timeout`` (``BUSY_TIMEOUT_S``, set on each
  connection); a lock timeout, a deadlock or a serialisation failure while taking the write lock is retried like a
  busy SQLite, after a random pause, and ends as :class:`StoreBusy`; one later in the transaction rolls it back and
  is reported as :class:`StoreBusy` too, never as the driver's message.
- ``transaction(lock="rows")`` is for the few writes whose correctness is their own row locks (a worker's heartbeat
  and progress: one job's row, updated or read ``FOR UPDATE``): on PostgreSQL they skip the write lock, so a
  heartbeat never waits behind an import's commit, only behind another writer of the same row. On SQLite there is
  one lock only, so both kinds take it.
- :func:`read` is a read-only snapshot: a plain ``BEGIN`` on SQLite (under WAL it neither waits for writers nor
  blocks them), ``REPEATABLE READ READ ONLY`` on PostgreSQL (every query inside sees the same committed state).

Durability: WAL with ``synchronous=FULL``. NORMAL (the former level) is safe against a crashed process but lets a
power cut undo the last commits: an import the user was told had succeeded could vanish. FULL syncs the WAL at every
commit; measured on this project's CI machine at 0.44 ms per commit against 0.01 ms, which a studio's commits
(imports, labels, a heartbeat a second per job) never notice. Files a commit publishes are fsynced, and the folders
that receive them, before it (``core.fsutil``, ``core.store.datasets.commit_import``). On PostgreSQL durability is the
server's: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` on, which ``python -m core doctor`` checks.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import paths, settings
from core.errors import UserError
from core.store.migrate import upgrade

BUSY_TIMEOUT_S = 10.0  # how long a lock is waited for at each attempt (SQLite: busy_timeout, PostgreSQL: lock_timeout)
RETRIES = 5  # attempts after the first, each after a random pause of up to RETRY_PAUSE_S
RETRY_PAUSE_S = 0.5
CONNECT_TIMEOUT_S = 10  # PostgreSQL: seconds to reach the server (unless the URL says connect_timeout=...)
BEGIN_OPTION = "store_begin"  # execution option: "IMMEDIATE" (write), "DEFERRED" (default) or "manual"
_PG_WRITE_LOCK = 0x44545354_57524954  # "DTST" "WRIT": the one advisory lock every studio writer takes
# PostgreSQL's SQLSTATEs that mean "try again": lock_timeout passed, a deadlock broken, a serialisation failure
_PG_RETRY = ("55P03", "40P01", "40001")
LOCKS = ("store", "rows")

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_writing = threading.local()  # .active: this thread is inside a write transaction


class StoreBusy(UserError):
    """The store's write lock stayed taken through every attempt: another process writes for a long time."""


def url() -> str:
    """The store's SQLAlchemy URL: ``DEEPTRAIN_DB_URL`` (the setting ``db_url``), else SQLite in the data directory."""
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


def _pg_connect(dbapi_conn, _record) -> None:
    """Every PostgreSQL connection waits at most ``BUSY_TIMEOUT_S`` for any lock (SQLite's busy timeout)."""
    cur = dbapi_conn.cursor()
    cur.execute(f"SET lock_timeout = {int(BUSY_TIMEOUT_S * 1000)}")  # committed: stays for the session
    cur.close()
    dbapi_conn.commit()


def create(url: str) -> Engine:
    """A new engine for ``url`` with the store's connection settings (SQLite pragmas, PostgreSQL's lock timeout);
    its schema is left as it is. :func:`engine` is the cached, upgraded one the studio uses."""
    if url.startswith("sqlite"):
        eng = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
        sa.event.listen(eng, "connect", _sqlite_connect)
        sa.event.listen(eng, "begin", _sqlite_begin)
        return eng
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return sa.create_engine(url, pool_pre_ping=True)
    # A server that does not answer fails in seconds (doctor says so) rather than after the system's TCP timeout.
    args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    eng = sa.create_engine(url, pool_pre_ping=True, connect_args=args)
    sa.event.listen(eng, "connect", _pg_connect)
    return eng


def describe(url: str | sa.URL) -> str:
    """The database a URL names, for messages and ``doctor``: the SQLite file, or the URL without its password."""
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database or ':memory:'}"
    return url.render_as_string(hide_password=True)


def engine(check: bool = True) -> Engine:
    """The engine for the current ``DEEPTRAIN_HOME`` (or ``DEEPTRAIN_DB_URL``), its schema upgraded once per process.

    ``check``: run the start-up check (``core.startup``) once per process and data directory: store integrity,
    interrupted imports, orphaned temporary files. ``python -m core doctor`` opens the store without it, to report
    rather than refuse.
    """
    address = url()
    eng = _engines.get(address)
    if eng is None:
        with _lock:
            eng = _engines.get(address)
            if eng is None:
                eng = create(address)
                upgrade(eng)
                _engines[address] = eng
    if check:
        from core import startup

        startup.check_once(eng)
    return eng


def _busy(exc: sa.exc.DBAPIError) -> bool:
    """The error says a lock could not be had (worth a retry): SQLite busy or locked, or one of ``_PG_RETRY``."""
    state = getattr(exc.orig, "sqlstate", None)
    if state is not None:
        return state in _PG_RETRY
    text = str(exc.orig).lower()
    return isinstance(exc, sa.exc.OperationalError) and ("locked" in text or "busy" in text)


def _busy_message(eng: Engine) -> str:
    return (f"The store {eng.url.database or eng.url} stayed busy: another process held its write lock for over "
            f"{(RETRIES + 1) * BUSY_TIMEOUT_S:.0f} s; try again in a moment")


def _begin_write(conn: Connection, lock: str) -> sa.engine.RootTransaction:
    """Open a write transaction on ``conn`` holding the lock ``lock`` names (see the module's docstring)."""
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="READ COMMITTED")
        trans = conn.begin()
        if lock == "store":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITE_LOCK})
        return trans
    conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})  # SQLite: its one lock, whichever ``lock`` says
    return conn.begin()


@contextmanager
def transaction(lock: str = "store") -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on any error; see the module's docstring.

    Args:
        lock: ``"store"`` (the studio's write lock: what is read inside stays true until the commit) or ``"rows"``
            (PostgreSQL: only the row locks the statements take; for single-row writes such as heartbeats).

    Raises:
        StoreBusy: the write lock could not be had within ``(RETRIES + 1) * BUSY_TIMEOUT_S`` seconds and the pauses,
            or (PostgreSQL) a lock wait inside the transaction timed out or ended in a deadlock.
        RuntimeError: this thread is inside a write transaction already: a second one would wait for the first's lock
            until StoreBusy; pass the open connection on instead.
    """
    if lock not in LOCKS:
        raise ValueError(f"Unknown lock {lock!r}; locks: {', '.join(LOCKS)}")
    if getattr(_writing, "active", False):
        raise RuntimeError("a write transaction inside another one waits for itself: use the open connection")
    eng = engine()
    conn = eng.connect()
    try:
        for attempt in range(RETRIES + 1):
            try:
                trans = _begin_write(conn, lock)
                break
            except sa.exc.DBAPIError as exc:
                if not _busy(exc):
                    raise
                conn.close()
                if attempt == RETRIES:
                    raise StoreBusy(_busy_message(eng)) from None
                time.sleep(random.uniform(0.0, RETRY_PAUSE_S))
                conn = eng.connect()
        _writing.active = True
        try:
            yield conn
        except sa.exc.DBAPIError as exc:
            trans.rollback()
            if conn.dialect.name != "postgresql" or not _busy(exc):
                raise
            raise StoreBusy(_busy_message(eng)) from exc
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
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        yield conn


def now() -> float:
    return time.time()


def inserted_id(result: sa.CursorResult) -> int:
    """The autoincrement key of the row a single-row ``INSERT`` just added."""
    key = result.inserted_primary_key
    if key is None:  # SQLAlchemy gives none for anything but a single-row INSERT
        raise RuntimeError("inserted_id: the statement was not a single-row INSERT")
    return int(key[0])
