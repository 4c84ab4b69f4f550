"""The store: the only code that speaks to the database.

SQLAlchemy Core over SQLite (WAL, foreign keys on) by default; ``DEEPTRAIN_DB_URL`` may point at PostgreSQL.
Each area keeps its queries in one module of this package (``datasets``, ``models``, ``jobs``, ``indexes``);
they share the engine and the schema defined in ``core.store.schema``. Writes go through ``transaction()`` (the write
lock first), reads through ``read()`` (a snapshot that never waits); ``core.store.integrity`` holds the blob collector
and the checks ``python -m core doctor`` runs.
"""

from core.store.engine import engine, now, read, transaction

__all__ = ["engine", "now", "read", "transaction"]
