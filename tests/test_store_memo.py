"""Reads remembered until the store changes (core.store.memo), on SQLite and on a real PostgreSQL server: kept while
nothing is committed, read again after a commit from this process or from another one (a key revoked on the command
line while the API serves)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core import keys
from core.store import memo
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def fresh_memo():
    memo.clear()
    yield
    memo.clear()


def _other_process(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_a_value_is_kept_until_any_commit_here_or_in_another_process(store_backend):
    keys.create_key("local", "first")
    reads: list[int] = []

    def count() -> int:
        reads.append(1)
        return len(keys.list_keys("local"))

    assert memo.remembered("keys", count) == 1
    assert memo.remembered("keys", count) == 1 and len(reads) == 1  # nothing committed: kept
    keys.create_key("local", "second")  # a commit in this process
    assert memo.remembered("keys", count) == 2 and len(reads) == 2
    assert memo.remembered("keys", count) == 2 and len(reads) == 2
    _other_process("from core import keys; keys.create_key('local', 'third')")
    assert memo.remembered("keys", count) == 3 and len(reads) == 3


def test_a_key_revoked_in_another_process_is_refused_on_the_next_quick_check(store_backend):
    key = keys.create_key("local", "k")["key"]
    caller = keys.authenticate(key)  # the slow path writes "last used" and reads the owner's role
    assert keys.authenticate(key, quick=True) == caller
    assert keys.authenticate(key, quick=True) == caller
    _other_process("from core import keys; keys.revoke_key('local', 'k')")
    assert keys.authenticate(key, quick=True) is None


def test_a_kept_dict_is_handed_out_as_a_copy(deeptrain_home):
    memo.remembered("row", lambda: {"name": "a"})["name"] = "changed by a caller"
    assert memo.remembered("row", lambda: pytest.fail("read again")) == {"name": "a"}


def test_a_store_made_again_at_the_same_path_is_read_again(deeptrain_home):
    import importlib
    import shutil

    store_engine = importlib.import_module("core.store.engine")  # the module: core.store exports a function so named
    keys.create_key("local", "a")
    assert memo.remembered("count", lambda: len(keys.list_keys("local"))) == 1
    store_engine._engines.pop(store_engine.url()).dispose()
    shutil.rmtree(deeptrain_home)  # another store at the same path: its file is another file
    keys.create_key("local", "b")
    keys.create_key("local", "c")
    assert memo.remembered("count", lambda: len(keys.list_keys("local"))) == 2
