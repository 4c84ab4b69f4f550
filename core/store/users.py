"""Every query on the ``users`` table: who was seen, when, how, and the role an admin gave them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from core.store.engine import now, read, transaction
from core.store.schema import blobs, datasets, items, jobs, users


def seen(name: str, via: str, initial_role: str | None = None) -> dict[str, Any]:
    """Record that ``name`` acted now (created on first sight with ``initial_role``); return the row."""
    t = now()
    with transaction() as conn:
        updated = conn.execute(users.update().where(users.c.name == name).values(last_seen=t)).rowcount
        if not updated:
            conn.execute(users.insert().values(name=name, role=initial_role, first_seen=t, last_seen=t,
                                               seen_via=via))
        return dict(conn.execute(sa.select(users).where(users.c.name == name)).one()._mapping)


def get(name: str) -> dict[str, Any] | None:
    with read() as conn:
        row = conn.execute(sa.select(users).where(users.c.name == name)).first()
    return dict(row._mapping) if row else None


def set_role(name: str, role: str) -> bool:
    """Store ``name``'s role; False when the user was never seen."""
    with transaction() as conn:
        return conn.execute(users.update().where(users.c.name == name).values(role=role)).rowcount == 1


def list_users() -> list[dict[str, Any]]:
    with read() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(users).order_by(users.c.name))]


def storage_bytes(owner: str | None = None) -> dict[str, int]:
    """Bytes of stored images per owner (each image counted once per owner, however many of their datasets hold it)."""
    per_owner = (sa.select(datasets.c.owner, items.c.blob).join(items, items.c.dataset_id == datasets.c.id)
                 .distinct())
    if owner is not None:
        per_owner = per_owner.where(datasets.c.owner == owner)
    sub = per_owner.subquery()
    q = (sa.select(sub.c.owner, sa.func.coalesce(sa.func.sum(blobs.c.nbytes), 0))
         .join(blobs, blobs.c.hash == sub.c.blob).group_by(sub.c.owner))
    with read() as conn:
        return {o: int(n) for o, n in conn.execute(q)}


def job_counts() -> dict[str, dict[str, int]]:
    """{owner: {state: count}} over every job."""
    out: dict[str, dict[str, int]] = {}
    with read() as conn:
        for owner, state, n in conn.execute(sa.select(jobs.c.owner, jobs.c.state, sa.func.count())
                                            .group_by(jobs.c.owner, jobs.c.state)):
            out.setdefault(owner, {})[state] = int(n)
    return out
