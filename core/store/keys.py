"""Every query on the ``api_keys`` table: a user's API keys, found by the hash of the key (never the key itself)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from core.store.engine import inserted_id, now, read, transaction
from core.store.schema import api_keys


def _row(r: Any) -> dict[str, Any]:
    d = dict(r._mapping)
    d["scopes"] = list(d.get("scopes") or [])
    return d


def create(owner: str, name: str, key_hash: str, prefix: str, scopes: list[str]) -> dict[str, Any] | None:
    """Store a key of ``owner`` named ``name``; None when ``owner`` has an active key of that name already."""
    with transaction() as conn:
        taken = conn.execute(sa.select(api_keys.c.id).where(api_keys.c.owner == owner, api_keys.c.name == name,
                                                            api_keys.c.revoked_at.is_(None))).first()
        if taken is not None:
            return None
        inserted = conn.execute(api_keys.insert().values(owner=owner, name=name, key_hash=key_hash, prefix=prefix,
                                                         scopes=list(scopes), created_at=now()))
        return _row(conn.execute(sa.select(api_keys).where(api_keys.c.id == inserted_id(inserted))).one())


def by_hash(key_hash: str) -> dict[str, Any] | None:
    """The active (not revoked) key with this hash, or None."""
    with read() as conn:
        r = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == key_hash,
                                                   api_keys.c.revoked_at.is_(None))).first()
    return _row(r) if r else None


def list_keys(owner: str) -> list[dict[str, Any]]:
    """``owner``'s keys, active first, newest first."""
    with read() as conn:
        rows = conn.execute(sa.select(api_keys).where(api_keys.c.owner == owner)
                            .order_by(api_keys.c.revoked_at.is_not(None), api_keys.c.created_at.desc(),
                                      api_keys.c.id.desc()))
        return [_row(r) for r in rows]


def revoke(owner: str, name: str) -> int:
    """Revoke ``owner``'s active keys named ``name``; how many were revoked."""
    with transaction() as conn:
        return conn.execute(api_keys.update().where(api_keys.c.owner == owner, api_keys.c.name == name,
                                                    api_keys.c.revoked_at.is_(None)).values(revoked_at=now())).rowcount


def touch(key_id: int, when: float) -> None:
    """Record when a key was last used."""
    with transaction() as conn:
        conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=when))
