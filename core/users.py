"""Who acts: the user every service takes first, and what that user may see and change.

Every dataset, job, model and index has an owner and a visibility: ``private`` (the default: its owner alone sees
it) or ``team`` (every user sees it and may use it, read-only). Only the owner changes, deletes, cancels or shares a
thing; an admin sees and may act on everything. A thing a user may not see answers exactly like one that does not
exist (:class:`NotFound`, same message), so its existence stays private.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import UserError

VISIBILITIES = ("private", "team")
ROLES = ("admin", "member", "viewer")
# What each role may do: a viewer browses, evaluates and searches; a member also imports, labels, trains, builds
# indexes and shares; an admin sees and may act on everything.
_RANK = {"viewer": 0, "member": 1, "admin": 2}
_NAME_RE = re.compile(r"^[\w][\w.@+-]{0,99}$")


class NotFound(UserError, LookupError):
    """No such thing, or one the acting user may not see: the two answer the same."""


class NotAllowed(UserError, PermissionError):
    """The acting user sees the thing but may not change it (a team item of someone else)."""


@dataclass(frozen=True)
class User:
    """The acting user: a name (an email or login) and a role (admin | member | viewer)."""

    name: str
    role: str = "member"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def __str__(self) -> str:
        return self.name


def as_user(user: User | str) -> User:
    """A User from a User or a plain name (a name acts as a member)."""
    if isinstance(user, User):
        return user
    return User(check_user_name(user))


def check_user_name(name: str) -> str:
    """A user name: 1-100 letters, digits or ``_ . @ + -``, starting with a letter or digit (emails fit)."""
    cleaned = (name or "").strip() if isinstance(name, str) else ""
    if not _NAME_RE.match(cleaned):
        raise UserError(f"User name {name!r} is not allowed: use 1-100 letters, digits or _ . @ + -, starting with "
                        "a letter or digit")
    return cleaned


def check_visibility(visibility: str) -> str:
    if visibility not in VISIBILITIES:
        raise UserError(f"Visibility {visibility!r} is not allowed; choose one of {', '.join(VISIBILITIES)}")
    return visibility


def can_see(user: User | str, row: Mapping[str, Any]) -> bool:
    user = as_user(user)
    return user.is_admin or row["owner"] == user.name or row.get("visibility") == "team"


def can_change(user: User | str, row: Mapping[str, Any]) -> bool:
    user = as_user(user)
    return user.is_admin or row["owner"] == user.name


def has_role(user: User | str, role: str) -> bool:
    """Whether ``user``'s role is ``role`` or above (viewer < member < admin)."""
    return _RANK.get(as_user(user).role, -1) >= _RANK[role]


def require_role(user: User | str, role: str, what: str) -> None:
    """Refuse ``what`` (e.g. "importing a dataset") unless ``user``'s role is ``role`` or above."""
    user = as_user(user)
    if not has_role(user, role):
        raise NotAllowed(f"{user.name} is a {user.role}: {what} needs the {role} role; ask an admin")


def require_owner(user: User | str, row: Mapping[str, Any], label: str) -> None:
    """Refuse a change to ``row`` (a thing ``user`` sees, named ``label`` in the message, e.g. "Dataset 'cats'")
    unless ``user`` owns it (and may change things: a member) or is an admin."""
    require_role(user, "member", f"changing {label}")
    if not can_change(user, row):
        raise NotAllowed(f"{label} belongs to {row['owner']} and is shared with the team read-only; only its owner "
                         "can change it")
