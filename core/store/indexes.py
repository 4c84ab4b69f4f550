"""Every query on the ``indexes`` table: one row per visual-search index (its files live in ``path``).

A row records the dataset (and the dataset version it was last synchronised with), the embedding model (``"general"``
or ``"model:<id>"``), dimension, vector count, backend type and parameters, and build time. The vectors themselves
are files in the index folder (see ``core.search.service``).
"""

from __future__ import annotations

from typing import Any, cast

import sqlalchemy as sa

from core.errors import UserError
from core.records import IndexRow
from core.store import access
from core.store.engine import inserted_id, now, read, transaction
from core.store.schema import indexes
from core.users import NotFound, User


def _row(r: Any) -> IndexRow:
    d = dict(r._mapping)
    d["params"] = dict(d.get("params") or {})
    return cast(IndexRow, d)


def name_taken(owner: str, name: str) -> bool:
    with read() as conn:
        return conn.execute(sa.select(indexes.c.id).where(indexes.c.owner == owner, indexes.c.name == name)).first() \
            is not None


def unique_name(owner: str, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever is free for this owner."""
    name, n = base, 1
    while name_taken(owner, name):
        n += 1
        name = f"{base}-{n}"
    return name


def create_index(owner: str, name: str, dataset_id: int, dataset_version: int | None, model: str, dim: int,
                 count: int, index_type: str, params: dict, path: str, build_seconds: float | None) -> int:
    """Register a built index; UserError when the owner already has an index of that name."""
    if not name or not name.strip():
        raise UserError("An index needs a name")
    with transaction() as conn:
        clash = conn.execute(sa.select(indexes.c.id).where(indexes.c.owner == owner, indexes.c.name == name)).first()
        if clash is not None:
            raise UserError(f"index {name!r}: the name is taken; choose another or delete that index first")
        res = conn.execute(indexes.insert().values(
            owner=owner, name=name, dataset_id=int(dataset_id), dataset_version=dataset_version, model=model,
            dim=int(dim), count=int(count), index_type=index_type, params=params, path=str(path),
            build_seconds=build_seconds, created_at=now()))
        return inserted_id(res)


def update_index(index_id: int, **fields: Any) -> None:
    """Change recorded facts after a sync or rebuild (count, dataset_version, index_type, params, build_seconds)."""
    allowed = {"dataset_version", "count", "index_type", "params", "build_seconds", "dim", "path"}
    bad = set(fields) - allowed
    if bad:
        raise ValueError(f"cannot update {sorted(bad)}; allowed: {sorted(allowed)}")
    with transaction() as conn:
        conn.execute(indexes.update().where(indexes.c.id == int(index_id)).values(**fields))


def get_index_by_id(index_id: int) -> IndexRow:
    with read() as conn:
        r = conn.execute(sa.select(indexes).where(indexes.c.id == int(index_id))).first()
    if r is None:
        raise NotFound(f"index {index_id}: no such index")
    return _row(r)


def get_index(user: User | str, ref: str | int) -> IndexRow:
    """The index ``ref`` (a name, ``owner/name`` or an id) that ``user`` sees; NotFound listing the visible ones
    otherwise (an index the user may not see answers like a missing one)."""
    with read() as conn:
        r = access.lookup(conn, indexes, user, ref)
        if r is None:
            names = access.visible_names(conn, indexes, user)
    if r is None:
        have = ", ".join(names) if names else "none yet (build one with `python -m core index build`)"
        raise NotFound(f"index {ref!r}: not found; indexes: {have}")
    return _row(r)


def list_indexes(user: User | str | None = None, dataset_id: int | None = None,
                 model: str | None = None) -> list[IndexRow]:
    """Indexes, newest first: those ``user`` sees (every index with None), optionally of one dataset and/or model."""
    q = sa.select(indexes).order_by(indexes.c.id.desc())
    if user is not None:
        q = q.where(access.visible(indexes, user))
    if dataset_id is not None:
        q = q.where(indexes.c.dataset_id == int(dataset_id))
    if model is not None:
        q = q.where(indexes.c.model == model)
    with read() as conn:
        return [_row(r) for r in conn.execute(q)]


def set_visibility(index_id: int, visibility: str) -> None:
    with transaction() as conn:
        conn.execute(indexes.update().where(indexes.c.id == int(index_id)).values(visibility=visibility))


def delete_index_row(index_id: int) -> None:
    with transaction() as conn:
        conn.execute(indexes.delete().where(indexes.c.id == int(index_id)))
