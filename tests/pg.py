"""A real PostgreSQL server for the tests marked ``postgres``: a fresh database per test, dropped after it.

The server is named by ``DEEPTRAIN_TEST_PG_URL`` (``postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE``, a role
that may ``CREATE DATABASE``; ``.ci/run`` starts one and sets it). Where it is unset or no server answers, the tests
skip and say why; with ``DEEPTRAIN_REQUIRE_POSTGRES=1`` (CI) they fail instead, so a build cannot pass by skipping
them.
"""

from __future__ import annotations

import functools
import importlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

SERVER_ENV = "DEEPTRAIN_TEST_PG_URL"
REQUIRE_ENV = "DEEPTRAIN_REQUIRE_POSTGRES"
CONNECT_TIMEOUT_S = 3


@functools.cache
def _server() -> tuple[sa.URL | None, str]:
    """The server's URL, or None and why there is none; asked once per test session."""
    raw = os.environ.get(SERVER_ENV, "").strip()
    if not raw:
        return None, (f"no PostgreSQL server for the tests: set {SERVER_ENV}=postgresql+psycopg://USER:PASSWORD@HOST:"
                      "PORT/DATABASE (a role that may CREATE DATABASE); .ci/run starts one")
    url = sa.make_url(raw)
    shown = url.render_as_string(hide_password=True)
    try:
        eng = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        eng.dispose()
    except Exception as exc:  # noqa: BLE001 - any reason the server cannot be used is a reason to skip
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return None, f"no PostgreSQL server answers at {shown} ({SERVER_ENV}): {first}"
    return url, ""


def server_url() -> sa.URL:
    """The test server's URL; skips the test (fails it under ``DEEPTRAIN_REQUIRE_POSTGRES=1``) when there is none."""
    url, why = _server()
    if url is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{why} ({REQUIRE_ENV}=1: these tests must run here, not skip)", pytrace=False)
        pytest.skip(why)
    return url


@contextmanager
def fresh_database(server: sa.URL | None = None, prefix: str = "dt_test_") -> Iterator[str]:
    """A new, empty database on ``server`` (default: the test server); yields its URL (password included, for
    engines), then drops it with every connection still open to it (the studio's cached engine for it is disposed
    first). The benchmarks use it with a server of their own."""
    server = server or server_url()
    admin = sa.create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        store_engine = importlib.import_module("core.store.engine")
        cached = store_engine._engines.pop(url, None)
        if cached is not None:
            cached.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
