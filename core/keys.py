"""API keys: how a program acts as its user through the HTTP API (``python -m core serve``).

A key is shown once, when it is created; the store keeps only its SHA-256 (a key is 256 random bits, so a plain hash
cannot be reversed or guessed, and checking one costs a single indexed lookup). A key acts as its owner, with the
owner's visibility and role as they are now (a role an admin changes applies to the owner's keys within
``ROLE_REFRESH_S``), optionally narrowed to scopes: ``predict`` (predict and embed), ``search`` (search and embed),
``read`` (list models and indexes, read jobs). A key without scopes may do everything its owner may, submitting jobs
included. Revoking is immediate: every request looks the key up again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.errors import NotQuick, UserError
from core.store import keys as store
from core.store import memo
from core.users import NotFound, User, as_user

SCOPES = ("predict", "search", "read")
KEY_PREFIX = "dts_"  # every key starts so: a secret scanner (or a person) recognises one in a leaked file
SHOWN_CHARS = 12  # the key's first characters kept to recognise it in a list: the prefix and 8 random characters
ROLE_REFRESH_S = 30.0  # how long a key's owner's role is reused before it is read again (as the pages do)
TOUCH_EVERY_S = 60.0  # "last used" is written at most this often per key (a write per request would cost more)
_NAME_RE = re.compile(r"^[\w][\w .@+-]{0,63}$")
_KEY_RE = re.compile(r"^dts_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Caller:
    """Who a request acts as: the key's owner (with their current role), the key's name and its scopes."""

    user: User
    key_id: int
    key_name: str
    scopes: tuple[str, ...]  # empty: every scope, and job submission

    def allows(self, scope: str | None) -> bool:
        """Whether the key may do what needs ``scope`` (None: only a key without scopes)."""
        return not self.scopes or (scope is not None and scope in self.scopes)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_key_name(name: Any) -> str:
    cleaned = name.strip() if isinstance(name, str) else ""
    if not _NAME_RE.match(cleaned):
        raise UserError(f"Key name {name!r} is not allowed: use 1-64 letters, digits, spaces or _ . @ + -, starting "
                        "with a letter or digit")
    return cleaned


def check_scopes(scopes: Any) -> list[str]:
    """The scopes as a sorted list without repeats; UserError naming an unknown one."""
    if scopes is None:
        return []
    if isinstance(scopes, str):
        scopes = [s for s in re.split(r"[,\s]+", scopes) if s]
    if not isinstance(scopes, (list, tuple)) or not all(isinstance(s, str) for s in scopes):
        raise UserError(f"scopes must be a list of names among {', '.join(SCOPES)}")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise UserError(f"Unknown scope {unknown[0]!r}; scopes: {', '.join(SCOPES)} (none: everything the owner may "
                        "do)")
    return sorted(set(scopes))


def _public(row: dict) -> dict[str, Any]:
    return {"name": row["name"], "owner": row["owner"], "prefix": row["prefix"], "scopes": row["scopes"],
            "created_at": row["created_at"], "last_used_at": row["last_used_at"], "revoked_at": row["revoked_at"],
            "active": row["revoked_at"] is None}


def create_key(user: User | str, name: str, scopes: Any = None) -> dict[str, Any]:
    """A new key of ``user``'s named ``name``: the listing's fields plus ``"key"``, the only time it is shown."""
    user = as_user(user)
    name, scopes = check_key_name(name), check_scopes(scopes)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = store.create(user.name, name, _hash(key), key[:SHOWN_CHARS], scopes)
    if row is None:
        raise UserError(f"You have a key named {name!r} already; choose another name, or revoke that key first")
    return {**_public(row), "key": key}


def list_keys(user: User | str) -> list[dict[str, Any]]:
    """``user``'s keys (never the keys themselves): name, first characters, scopes, created, last used, revoked."""
    return [_public(r) for r in store.list_keys(as_user(user).name)]


def revoke_key(user: User | str, name: str) -> dict[str, Any]:
    """Revoke ``user``'s active key ``name``: it is refused from the next request on. NotFound when there is none."""
    user = as_user(user)
    cleaned = name.strip() if isinstance(name, str) else ""
    if not store.revoke(user.name, cleaned):
        raise NotFound(f"You have no active key named {name!r}")
    return next(k for k in list_keys(user) if k["name"] == cleaned)


_roles: dict[str, tuple[User, float]] = {}  # owner -> (User with role, when read)
_touched: dict[int, float] = {}
_lock = threading.Lock()


def _owner(name: str, quick: bool = False) -> User:
    """The key owner as a User with their current role (core.accounts), reused for ROLE_REFRESH_S. ``quick``:
    ``NotQuick`` rather than reading the account again."""
    t = time.monotonic()
    with _lock:
        hit = _roles.get(name)
    if hit is not None and t - hit[1] < ROLE_REFRESH_S:
        return hit[0]
    if quick:
        raise NotQuick(f"the role of {name!r} is due to be read")
    from core import accounts
    from core.store import users

    seen = users.get(name)
    via = seen["seen_via"] if seen and seen["seen_via"] in accounts.VIAS else "cli"
    user = accounts.identify(name, via)
    with _lock:
        _roles[name] = (user, t)
    return user


def authenticate(key: Any, quick: bool = False) -> Caller | None:
    """The caller behind ``key`` (the value after ``Bearer``), or None for anything that is not an active key.

    ``quick`` (an event loop's call): the key's row as read while the store has not changed since
    (``core.store.memo``), or ``NotQuick`` when the key's "last used" is due to be written or its owner's role to be
    read again (a write may wait on the store's lock), for the caller to call again on a thread."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        return None
    digest = _hash(key)
    row = memo.remembered(("api_key", digest), lambda: store.by_hash(digest)) if quick else store.by_hash(digest)
    if row is None:
        return None
    now = time.time()
    user = _owner(row["owner"], quick=quick)
    with _lock:
        due = now - _touched.get(row["id"], 0.0) >= TOUCH_EVERY_S
        if due and quick:
            raise NotQuick(f"key {row['id']}'s last use is due to be written")
        if due:
            _touched[row["id"]] = now
    if due:
        store.touch(row["id"], now)
    return Caller(user, row["id"], row["name"], tuple(row["scopes"]))
