"""Shared fixtures: every test gets its own data directory, so nothing touches the user's data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALTECH = ROOT.parent / "shared" / "datasets" / "caltech101"


@pytest.fixture(autouse=True)
def deeptrain_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPTRAIN_HOME", str(home))
    monkeypatch.delenv("DEEPTRAIN_DB_URL", raising=False)
    return home


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_backend(request, deeptrain_home, monkeypatch):
    """Run the test on each database the store supports: SQLite in the data directory (the default), and a fresh
    database on a real PostgreSQL server (``tests.pg``: skipped with the reason where there is none) through
    ``DEEPTRAIN_DB_URL``, which worker processes the test starts inherit. Yields "sqlite" or "postgres"."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    from tests.pg import fresh_database

    with fresh_database() as url:
        monkeypatch.setenv("DEEPTRAIN_DB_URL", url)
        yield "postgres"


@pytest.fixture
def inline_jobs(monkeypatch) -> None:
    """Jobs run inline (setting job_backend): queued and run to the end by the call that queues them, in this process,
    for tests that are about what a job does rather than about worker processes (starting one costs a few seconds of
    the suite: a fresh interpreter importing torch). Kill, restart, cancel and live progress keep real workers."""
    monkeypatch.setenv("DEEPTRAIN_JOB_BACKEND", "inline")


@pytest.fixture
def caltech() -> Path:
    if not (CALTECH / "101_ObjectCategories").is_dir():
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    return CALTECH


def caltech_slice(dest: Path, classes=("accordion", "anchor", "ant"), per_class: int = 6) -> Path:
    """Copy a few real Caltech-101 photos per class into ``dest/<class>/`` and return ``dest``."""
    import shutil

    src = CALTECH / "101_ObjectCategories"
    if not src.is_dir():
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    for cls in classes:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """Three Caltech-101 classes, six photos each, as a folder-per-concept tree."""
    return caltech_slice(tmp_path / "src")


os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture
def signed_in(monkeypatch):
    """Act as a signed-in user in AppTest pages: the studio trusts a reverse proxy's header (the setting
    ``auth_header``), and ``core.ui.request_headers`` is the one place headers are read. ``signed_in("bob")`` signs
    bob in as a member (an admin's stored role), ``signed_in("vic", "viewer")`` as a viewer; role None: the default."""
    import core.ui

    headers: dict[str, str] = {}
    monkeypatch.setenv("DEEPTRAIN_AUTH_HEADER", "X-Forwarded-Email")
    monkeypatch.setattr(core.ui, "request_headers", lambda: headers)

    def sign_in(name: str | None, role: str | None = "member") -> None:
        from core.store import users

        headers.clear()
        if name is not None:
            headers["X-Forwarded-Email"] = name
            users.seen(name, "proxy")
            if role is not None:
                users.set_role(name, role)

    return sign_in


def shown(markdown: str) -> str:
    """What a reader sees of a markdown body the pages escaped with ``core.ui.md`` (AppTest returns the source)."""
    import re

    return re.sub(r"\\(.)", r"\1", markdown)
