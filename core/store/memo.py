"""Reads remembered until anything in the store changes, for the HTTP API's quick path: a search reads the key, the
index's row and its dataset's version, three indexed reads that took 0.7 ms on this project's machine against 0.25 ms
for the FAISS search itself.

A value is kept with the store's *change stamp* read just before the value was, and given again only while the
stamp is still the same:

- SQLite: ``PRAGMA data_version`` on a connection of this module's own that never writes. SQLite changes it whenever
  another connection, in this process or any other, commits to the database file.
- PostgreSQL: ``pg_current_snapshot()``. The same snapshot means that no transaction which wrote has ended since: one
  in progress leaves its list when it ends, and a newer one moves its ``xmax``.

So a revoked key, a share withdrawn or an image deleted is seen by the very next request, as without the memo; any
commit (a job's heartbeat included) only makes the next read of each value go to the store again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from core.store.engine import engine, read

MAX_ENTRIES = 4096  # values kept (least recently used dropped): keys, indexes and datasets a server answers for

T = TypeVar("T")
_values: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
_sqlite: dict[tuple[str, int, int], sqlite3.Connection] = {}
_lock = threading.Lock()


def change_stamp() -> Hashable:
    """A value that differs from any earlier one whenever something was committed to the store in between."""
    eng = engine()
    if eng.dialect.name == "sqlite":
        path = str(eng.url.database)
        st = os.stat(path)
        file = (path, st.st_dev, st.st_ino)  # a store removed and made again at the same path is another file
        with _lock:
            conn = _sqlite.get(file)
            if conn is None:
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                _sqlite[file] = conn
            return (file, conn.execute("PRAGMA data_version").fetchone()[0])
    with read() as pg:
        return (str(eng.url), pg.exec_driver_sql("SELECT pg_current_snapshot()::text").scalar())


def remembered(key: Hashable, load: Callable[[], T]) -> T:
    """``load()``'s value for ``key`` as of now: the one kept while the store has not changed, else read again.
    A dict is handed out as a copy (callers may not change the kept one)."""
    stamp = change_stamp()  # before the read: a commit during it changes the stamp the next call sees
    with _lock:
        hit = _values.get(key)
        if hit is not None and hit[0] == stamp:
            _values.move_to_end(key)
            value = hit[1]
            return dict(value) if isinstance(value, dict) else value  # type: ignore[return-value]
    value = load()
    with _lock:
        _values[key] = (stamp, value)
        _values.move_to_end(key)
        while len(_values) > MAX_ENTRIES:
            _values.popitem(last=False)
    return dict(value) if isinstance(value, dict) else value  # type: ignore[return-value]


def clear() -> None:
    """Forget every value and close the stamp connections (tests; a data directory removed)."""
    with _lock:
        _values.clear()
        for conn in _sqlite.values():
            conn.close()
        _sqlite.clear()
