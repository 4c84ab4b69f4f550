"""The store: the only code that speaks to the database.

SQLAlchemy Core over SQLite (WAL, foreign keys on) by default; ``DEEPTRAIN_DB_URL`` may point at PostgreSQL.
Each area keeps its queries in one module of this package (``datasets``, ``models``, ``jobs``, ``indexes``);
they share the engine and the schema defined in ``core.store.schema``.
"""

from core.store.engine import engine, transaction, now

__all__ = ["engine", "transaction", "now"]
