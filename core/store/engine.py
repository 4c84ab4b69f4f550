"""One engine per data directory, its schema brought to the newest revision (``core.store.migrate``) on first use."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import paths, settings
from core.store.migrate import upgrade

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _url() -> str:
    return settings.get("db_url") or f"sqlite:///{paths.home() / 'studio.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def engine() -> Engine:
    """The engine for the current ``DEEPTRAIN_HOME`` (or ``DEEPTRAIN_DB_URL``), its schema upgraded once per process."""
    url = _url()
    eng = _engines.get(url)
    if eng is not None:
        return eng
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            if url.startswith("sqlite"):
                eng = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
                sa.event.listen(eng, "connect", _sqlite_pragmas)
            else:
                eng = sa.create_engine(url, pool_pre_ping=True)
            upgrade(eng)
            _engines[url] = eng
    return eng


@contextmanager
def transaction() -> Iterator[Connection]:
    """A connection inside one transaction: committed on success, rolled back on any error."""
    with engine().begin() as conn:
        yield conn


def now() -> float:
    return time.time()
