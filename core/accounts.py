"""The users a team server has seen and their roles: who someone is once signed in, and the admin's Users page.

A role comes, in this order, from the settings' ``admins`` list (always admins), from what an admin stored on the
Users page, and otherwise from how the user arrived: signed in (OIDC or the proxy header) gives the setting
``default_role`` (viewer unless changed); first seen through the command line's ``--user`` gives member (stored);
the single user of a studio without sign-in, and the operator's default command-line user, is the admin.
"""

from __future__ import annotations

from typing import Any

from core import paths, settings
from core.store import users as store
from core.users import ROLES, NotFound, User, as_user, check_user_name, require_role

VIAS = ("oidc", "proxy", "single", "cli")


def _default_role() -> str:
    role = settings.get("default_role")
    if role not in ROLES:
        from core.errors import UserError

        raise UserError(f"default_role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _role(name: str, stored: str | None, via: str) -> str:
    if name in settings.get("admins"):
        return "admin"
    if stored in ROLES:
        return stored
    if name == paths.DEFAULT_USER and via in ("single", "cli"):
        return "admin"
    return _default_role()


def identify(name: str, via: str) -> User:
    """The acting User behind a signed-in ``name`` (an email or login) arriving ``via`` oidc, proxy, single or cli;
    records that they were seen."""
    assert via in VIAS, via
    name = check_user_name(name)
    row = store.seen(name, via, initial_role="member" if via == "cli" and name != paths.DEFAULT_USER else None)
    return User(name, _role(name, row["role"], via))


def list_users(user: User | str) -> list[dict[str, Any]]:
    """Admins only: every user seen, with their role (and where it comes from), storage, jobs and when last seen."""
    require_role(user, "admin", "listing the users")
    storage, jobs = store.storage_bytes(), store.job_counts()
    out = []
    for row in store.list_users():
        name = row["name"]
        counts = jobs.get(name, {})
        out.append({
            "name": name, "role": _role(name, row["role"], row["seen_via"]),
            "role_from": "settings (admins)" if name in settings.get("admins") else
            "stored" if row["role"] in ROLES else "default",
            "storage_bytes": storage.get(name, 0), "jobs": sum(counts.values()),
            "jobs_active": sum(n for s, n in counts.items() if s in ("queued", "starting", "running")),
            "first_seen": row["first_seen"], "last_seen": row["last_seen"], "seen_via": row["seen_via"],
        })
    return out


def set_role(user: User | str, name: str, role: str) -> dict[str, Any]:
    """Admins only: store ``name``'s role (it overrides the default; the settings' admins stay admins)."""
    user = as_user(user)
    require_role(user, "admin", "changing roles")
    if role not in ROLES:
        from core.errors import UserError

        raise UserError(f"Role {role!r} is not allowed; choose one of {', '.join(ROLES)}")
    if not store.set_role(name, role):
        raise NotFound(f"Unknown user {name!r}; a user appears here once they have signed in")
    return next(u for u in list_users(user) if u["name"] == name)


def storage_used(user: User | str) -> int:
    """Bytes of images the user's datasets hold (each image counted once)."""
    return store.storage_bytes(as_user(user).name).get(as_user(user).name, 0)
