"""Bring a store's schema up to the newest revision in ``core/store/migrations/versions`` (Alembic).

:func:`upgrade` runs when a process first opens a database (``core.store.engine.engine``). Three cases:

- an empty database gets every revision, from the baseline on;
- a database written before migrations existed (``metadata.create_all``: the tables, no ``alembic_version``) is
  stamped at the baseline it already has, then upgraded;
- a database at the head is left alone, and finding that out stays cheap (about a millisecond): it reads
  ``alembic_version`` and compares it with the head found by reading the revision files as text, before Alembic
  (about 90 ms to import) is loaded at all.

Several processes (the Streamlit server, job workers) may open a fresh data directory at once, so the upgrade runs
under an exclusive lock and re-reads the version once it holds it: ``fcntl.flock`` on ``<database>.lock`` beside a
SQLite file, a transaction-scoped advisory lock on PostgreSQL. It also runs in one transaction (SQLite and
PostgreSQL both roll DDL back), so a crash half-way leaves the database at the revision it had.

A new revision is a file ``versions/NNNN_slug.py`` whose ``revision`` is that stem and whose ``down_revision`` is the
previous head; it spells out its tables and columns rather than importing ``core.store.schema`` (revisions are
frozen history), and ``tests/test_migrations.py`` fails until the revisions and the schema module agree.
"""

from __future__ import annotations

import fcntl
import functools
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
VERSIONS = MIGRATIONS / "versions"
BASELINE = "0001_baseline"
# The tables the baseline creates: a database holding them without an alembic_version table predates migrations.
BASELINE_TABLES = ("datasets", "blobs", "epoch_metrics", "items", "concepts", "import_reports", "models", "indexes",
                   "labels", "boxes", "jobs")
VERSION_TABLE = "alembic_version"
_PG_LOCK_KEY = 0x44545354_4D494752  # "DTST" "MIGR": one advisory lock key for every studio process on a server

_REVISION = re.compile(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(.*)$", re.MULTILINE)


def revisions() -> frozenset[str]:
    """Every revision id in ``versions/``, read from the files as text (no Alembic import)."""
    return _graph()[0]


def head() -> str:
    """The newest revision id, found without importing Alembic so that the no-op check stays cheap.

    Raises:
        RuntimeError: the revisions do not form one line (no head, or several heads left unmerged).
    """
    return _graph()[1]


@functools.cache
def _graph() -> tuple[frozenset[str], str]:
    """Every revision id and the one no other revision names as its ``down_revision``; read once per process."""
    found: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev = _REVISION.search(text)
        if rev is None:
            raise RuntimeError(f"{path}: no `revision = \"...\"` line")
        found.add(rev.group(1))
        down = _DOWN_REVISION.search(text)
        if down is not None:
            parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = sorted(found - parents)
    if len(heads) != 1:
        raise RuntimeError(f"{VERSIONS}: expected one head revision, found {heads or 'none'}")
    return frozenset(found), heads[0]


def current(conn: Connection) -> set[str] | None:
    """The revisions the database is stamped at; ``None`` when it has no ``alembic_version`` table."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return set(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def upgrade(eng: Engine) -> None:
    """Bring the database behind ``eng`` to the head revision; a cheap no-op when it is there already.

    Raises:
        RuntimeError: the database has some of the studio's tables but not all and no ``alembic_version``: it was not
            written by a release this code knows how to upgrade, and guessing would risk the user's data. Or it is at a
            revision this code does not have (a newer release upgraded it).
    """
    with eng.connect() as conn:
        if current(conn) == {head()}:
            return
    with _exclusive(eng) as conn:
        found = current(conn)  # again: another process may have upgraded while this one waited for the lock
        if found == {head()}:
            return
        unknown = sorted((found or set()) - revisions())
        if unknown:
            raise RuntimeError(f"{eng.url!r}: at revision {', '.join(unknown)}, which this version of the studio does "
                               f"not know (its newest is {head()}): it was upgraded by a newer release; run that one")
        if found is None:
            tables = set(sa.inspect(conn).get_table_names())
            present = [t for t in BASELINE_TABLES if t in tables]
            if present:
                missing = [t for t in BASELINE_TABLES if t not in tables]
                if missing:
                    raise RuntimeError(f"{eng.url!r}: has tables {present} but not {missing} and no {VERSION_TABLE} "
                                       "table; not a studio database this version can upgrade")
                _command(conn, "stamp", BASELINE)
        _command(conn, "upgrade", "head")


def run(eng: Engine, name: str, revision: str) -> None:
    """Run one Alembic command (``upgrade``, ``downgrade`` or ``stamp``) on ``eng``, locked and in one transaction.

    For developers and tests, e.g. ``run(engine(), "downgrade", "0001_baseline")``; the app only calls :func:`upgrade`.
    """
    with _exclusive(eng) as conn:
        _command(conn, name, revision)


def config(conn: Connection) -> Config:
    """An Alembic config for the studio's migrations that runs on ``conn`` (no alembic.ini: built here)."""
    from alembic.config import Config

    cfg = Config(stdout=io.StringIO())  # commands print nothing on the app's stdout
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))  # ini-style: % must be doubled
    cfg.attributes["connection"] = conn
    return cfg


def _command(conn: Connection, name: str, revision: str) -> None:
    from alembic import command

    getattr(command, name)(config(conn), revision)


@contextmanager
def _exclusive(eng: Engine) -> Iterator[Connection]:
    """A connection inside one transaction, held by this process alone among those that upgrade the same database.

    The transaction commits when the block ends without an error and rolls back otherwise, DDL included.
    """
    dialect = eng.dialect.name
    if dialect == "sqlite":
        database = eng.url.database
        in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
        with _file_lock(None if in_memory or database is None else Path(database)), eng.connect() as conn:
            # pysqlite leaves DDL outside any transaction unless one is open; BEGIN IMMEDIATE opens it and takes
            # SQLite's write lock at once, so DDL and the version stamp commit or roll back together. The store's
            # engine emits its own BEGIN (core.store.engine.BEGIN_OPTION): "manual" tells it this one is ours.
            conn.execution_options(store_begin="manual")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
    else:
        with eng.begin() as conn:
            if dialect == "postgresql":
                # No lock_timeout here (the store's connections have one): an upgrade in another process may take
                # long, and waiting for it is right, as flock waits on SQLite. Released by PostgreSQL itself when this
                # transaction ends, however it ends.
                conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield conn


@contextmanager
def _file_lock(database: Path | None) -> Iterator[None]:
    """Hold ``fcntl.flock`` on ``<database>.lock`` (nothing to lock for an in-memory database)."""
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + ".lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield
