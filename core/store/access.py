"""Visibility in queries: which rows of an owned table (datasets, models, indexes, jobs) a user may see, and the
lookup by name or id that answers a hidden row exactly like a missing one."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.users import NotFound, User, as_user


def visible(table: sa.Table, user: User | str):
    """A WHERE clause: the rows of ``table`` that ``user`` sees (own and team; every row for an admin)."""
    user = as_user(user)
    if user.is_admin:
        return sa.true()
    return sa.or_(table.c.owner == user.name, table.c.visibility == "team")


def visible_names(conn: Connection, table: sa.Table, user: User | str) -> list[str]:
    """The names ``user`` sees, own ones plain and others' as ``owner/name``, sorted."""
    user = as_user(user)
    rows = conn.execute(sa.select(table.c.owner, table.c.name).where(visible(table, user))).all()
    return sorted(r.name if r.owner == user.name else f"{r.owner}/{r.name}" for r in rows)


def lookup(conn: Connection, table: sa.Table, user: User | str, ref: str | int) -> Any | None:
    """The row ``ref`` names for ``user``, or None when there is none ``user`` may see.

    ``ref`` is, in this order: the user's own thing of that name; ``owner/name`` (names hold no ``/``); the one
    visible thing of someone else of that name; an id (an int or a string of digits). Several others' things of one
    name are ambiguous: NotFound asks for ``owner/name``.
    """
    user = as_user(user)
    seen = visible(table, user)
    text = str(ref).strip()
    if not isinstance(ref, int):
        row = conn.execute(sa.select(table).where(table.c.owner == user.name, table.c.name == text)).first()
        if row is not None:
            return row
        if "/" in text:
            owner, _, name = text.partition("/")
            return conn.execute(sa.select(table).where(seen, table.c.owner == owner, table.c.name == name)).first()
        others = conn.execute(sa.select(table).where(seen, table.c.name == text)).all()
        if len(others) > 1:
            raise NotFound(f"{text!r} names several shared things: say which, as "
                           f"{' or '.join(sorted(f'{r.owner}/{r.name}' for r in others))}")
        if others:
            return others[0]
    if isinstance(ref, int) or text.isdigit():
        return conn.execute(sa.select(table).where(seen, table.c.id == int(text))).first()
    return None
