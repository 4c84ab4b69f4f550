"""``python -m core doctor``: exit 0 on a healthy store (warnings listed), 1 on each kind of damage, on real files."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from core import paths
from core.cli import main
from core.data.importer import import_dataset
from core.store import datasets as store


def doctor(capsys, *args: str) -> tuple[int, dict]:
    rc = main(["doctor", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def stored(small_folder, deeptrain_home) -> list[dict]:
    """A dataset of 18 real photos; the data directory closed to other accounts (as a server's should be)."""
    import_dataset("local", small_folder, "photos", workers=1)
    os.chmod(deeptrain_home, 0o700)
    return store.dataset_records(store.find_dataset("local", "photos")["id"])


def test_a_healthy_store_exits_0_with_the_whole_report(stored, capsys):
    rc, report = doctor(capsys)
    assert rc == 0, report["errors"]
    assert report["status"] == "healthy" and report["errors"] == [] and report["warnings"] == []
    assert report["versions"]["python"] and report["versions"]["sqlite"] and report["versions"]["torch"]
    assert report["device"]["kind"] in ("cpu", "cuda") and report["disk"]["free_bytes"] > 0
    assert report["store"]["integrity"] == [] and report["store"]["dangling_rows"] == []
    assert report["store"]["unreadable"] == {}
    assert report["store"]["item_files"] == {"files": 18, "hashed": True, "items_missing_file": 0, "missing": [],
                                             "items_damaged_file": 0, "damaged": []}
    assert report["store"]["orphans"]["files_without_row"] == 0 and report["jobs"] == []
    rc = main(["doctor"])  # the text form
    text = capsys.readouterr().out
    assert rc == 0 and "status: healthy" in text and "images: 18 files hashed" in text


def test_an_item_whose_file_is_missing_exits_1(stored, capsys):
    os.unlink(stored[0]["path"])
    rc, report = doctor(capsys)
    assert rc == 1 and report["status"] == "damaged"
    assert report["store"]["item_files"]["items_missing_file"] == 1
    assert report["errors"] == [f"1 item(s) have lost their image file, e.g. {stored[0]['path']}"]


def test_a_file_that_does_not_hash_to_its_id_exits_1(stored, capsys):
    path = stored[3]["path"]
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other content
    Path(path).write_bytes(data)
    rc, report = doctor(capsys)
    assert rc == 1 and report["errors"] == [f"1 item(s) have an image file that does not hash to its id, e.g. {path}"]
    rc, report = doctor(capsys, "--fast")  # sizes only: the flipped byte goes unseen, and says so
    assert rc == 0 and report["store"]["item_files"]["hashed"] is False


def test_a_row_that_points_nowhere_exits_1(stored, capsys, deeptrain_home):
    db = sqlite3.connect(deeptrain_home / "studio.db")  # what a bug or a hand edit with foreign keys off leaves
    db.execute("INSERT INTO items (dataset_id, blob, split, created_at) VALUES (1, 'f00d', 'train', 0)")
    db.execute("INSERT INTO labels (item_id, concept_id) VALUES (999999, 1)")
    db.commit()
    db.close()
    rc, report = doctor(capsys)
    assert rc == 1
    assert {d["what"] for d in report["store"]["dangling_rows"]} == {"items.blob -> blobs.hash",
                                                                     "labels.item_id -> items.id"}
    assert "a row points nowhere: items.blob -> blobs.hash (1 row(s))" in report["errors"]


def test_a_store_failing_its_integrity_check_exits_1(stored, capsys, deeptrain_home):
    """Garbage over the pages of one index (ix_items_blob): the tables read fine, the integrity check does not."""
    from core.store.engine import engine

    with engine().connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine().dispose()  # nothing cached of the pages about to change
    db = sqlite3.connect(deeptrain_home / "studio.db")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_items_blob'").fetchone()[0]
    db.close()
    with open(deeptrain_home / "studio.db", "r+b") as fh:
        fh.seek((root - 1) * page_size + 8)
        fh.write(b"\xff" * 64)
    rc, report = doctor(capsys)
    assert rc == 1 and report["store"]["integrity"], report["store"]["unreadable"]
    assert any(e.startswith("integrity check: ") for e in report["errors"]), report["errors"]


def test_orphans_and_unsafe_settings_are_warnings_and_collect_removes_the_orphans(stored, capsys, monkeypatch):
    stray = paths.subdir("blobs") / "ab" / f"{'ab' * 32}.jpg"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"left by a crash")
    (paths.subdir("models") / "local-half-trained-1").mkdir()  # a training that died before registering
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", "/")
    monkeypatch.setenv("DEEPTRAIN_STALE_S", "1.5")
    rc, report = doctor(capsys)
    assert rc == 0 and report["errors"] == []
    assert report["store"]["orphans"]["files_without_row"] == 1
    assert report["warnings"][0] == ("1 stored file(s) and 0 blob row(s) are orphans awaiting the collector "
                                     "(`doctor --collect` removes them)")
    assert report["warnings"][1].startswith("1 model or index folder(s) no row refers to")
    unsafe = report["unsafe_settings"]
    assert len(unsafe) == 2 and unsafe[0].startswith("import_roots includes /, which holds the whole server")
    assert unsafe[1].startswith("stale_s (1.5) is under three heartbeats")
    rc, report = doctor(capsys, "--collect")
    assert rc == 0 and report["collected"]["store"]["files"] == 1 and not stray.exists()
    rc, report = doctor(capsys)
    assert report["store"]["orphans"]["files_without_row"] == 0 and report["store"]["item_files"]["files"] == 18
