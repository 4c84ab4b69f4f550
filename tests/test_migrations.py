"""The store upgrades itself: Alembic revisions bring every data directory to the schema of ``core.store.schema``.

A data directory written before migrations existed is rebuilt here from frozen DDL (what ``metadata.create_all``
made from the first release's schema), filled with a row in every table and real image files, then opened the way
the app opens it. The current schema module is never used to build that old store.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from core.store import migrate
from core.store.datasets import blob_file, thumb_file
from core.store.schema import metadata
from tests.conftest import ROOT

# The module, not the function `core.store.engine` that the package exports under the same name.
store_engine = importlib.import_module("core.store.engine")

# What `metadata.create_all` wrote into sqlite_master for the first release's schema (frozen; never edit).
V0_DDL = """
CREATE TABLE datasets (
	id INTEGER NOT NULL,
	owner VARCHAR NOT NULL,
	name VARCHAR NOT NULL,
	version INTEGER NOT NULL,
	source VARCHAR,
	created_at FLOAT NOT NULL,
	updated_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (owner, name)
);
CREATE TABLE blobs (
	hash VARCHAR NOT NULL,
	ext VARCHAR NOT NULL,
	width INTEGER NOT NULL,
	height INTEGER NOT NULL,
	grayscale BOOLEAN NOT NULL,
	nbytes INTEGER NOT NULL,
	PRIMARY KEY (hash)
);
CREATE TABLE epoch_metrics (
	id INTEGER NOT NULL,
	run VARCHAR NOT NULL,
	epoch INTEGER NOT NULL,
	metrics JSON NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (run, epoch)
);
CREATE INDEX ix_epoch_metrics_run ON epoch_metrics (run);
CREATE TABLE items (
	id INTEGER NOT NULL,
	dataset_id INTEGER NOT NULL,
	blob VARCHAR NOT NULL,
	source_path VARCHAR,
	split VARCHAR NOT NULL,
	video VARCHAR,
	video_time FLOAT,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE,
	FOREIGN KEY(blob) REFERENCES blobs (hash)
);
CREATE INDEX ix_items_blob ON items (blob);
CREATE INDEX ix_items_dataset_id ON items (dataset_id);
CREATE INDEX ix_items_dataset_split ON items (dataset_id, split);
CREATE TABLE concepts (
	id INTEGER NOT NULL,
	dataset_id INTEGER NOT NULL,
	name VARCHAR NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (dataset_id, name),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);
CREATE INDEX ix_concepts_dataset_id ON concepts (dataset_id);
CREATE TABLE import_reports (
	id INTEGER NOT NULL,
	dataset_id INTEGER NOT NULL,
	version INTEGER NOT NULL,
	created_at FLOAT NOT NULL,
	report JSON NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);
CREATE INDEX ix_import_reports_dataset_id ON import_reports (dataset_id);
CREATE TABLE models (
	id INTEGER NOT NULL,
	owner VARCHAR NOT NULL,
	name VARCHAR NOT NULL,
	kind VARCHAR NOT NULL,
	template VARCHAR NOT NULL,
	dataset_id INTEGER,
	dataset_version INTEGER,
	params JSON NOT NULL,
	concepts JSON NOT NULL,
	preprocess JSON NOT NULL,
	metrics JSON,
	path VARCHAR NOT NULL,
	train_seconds FLOAT,
	run VARCHAR,
	base_model_id INTEGER,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (owner, name),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE SET NULL
);
CREATE TABLE indexes (
	id INTEGER NOT NULL,
	owner VARCHAR NOT NULL,
	name VARCHAR NOT NULL,
	dataset_id INTEGER NOT NULL,
	dataset_version INTEGER,
	model VARCHAR NOT NULL,
	dim INTEGER NOT NULL,
	count INTEGER NOT NULL,
	index_type VARCHAR NOT NULL,
	params JSON,
	path VARCHAR NOT NULL,
	build_seconds FLOAT,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (owner, name),
	FOREIGN KEY(dataset_id) REFERENCES datasets (id) ON DELETE CASCADE
);
CREATE TABLE labels (
	item_id INTEGER NOT NULL,
	concept_id INTEGER NOT NULL,
	PRIMARY KEY (item_id, concept_id),
	FOREIGN KEY(item_id) REFERENCES items (id) ON DELETE CASCADE,
	FOREIGN KEY(concept_id) REFERENCES concepts (id) ON DELETE CASCADE
);
CREATE INDEX ix_labels_concept ON labels (concept_id, item_id);
CREATE TABLE boxes (
	id INTEGER NOT NULL,
	item_id INTEGER NOT NULL,
	concept_id INTEGER NOT NULL,
	x FLOAT NOT NULL,
	y FLOAT NOT NULL,
	w FLOAT NOT NULL,
	h FLOAT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(item_id) REFERENCES items (id) ON DELETE CASCADE,
	FOREIGN KEY(concept_id) REFERENCES concepts (id) ON DELETE CASCADE
);
CREATE INDEX ix_boxes_item_id ON boxes (item_id);
CREATE TABLE jobs (
	id INTEGER NOT NULL,
	owner VARCHAR NOT NULL,
	type VARCHAR NOT NULL,
	state VARCHAR NOT NULL,
	config JSON NOT NULL,
	model_id INTEGER,
	index_id INTEGER,
	pid INTEGER,
	cancel_requested BOOLEAN NOT NULL,
	progress JSON,
	error VARCHAR,
	traceback TEXT,
	created_at FLOAT NOT NULL,
	started_at FLOAT,
	finished_at FLOAT,
	heartbeat_at FLOAT,
	parent_id INTEGER,
	resume BOOLEAN NOT NULL,
	attempts INTEGER NOT NULL,
	claim VARCHAR,
	host VARCHAR,
	slot INTEGER,
	result JSON,
	history JSON,
	series JSON,
	PRIMARY KEY (id),
	FOREIGN KEY(model_id) REFERENCES models (id) ON DELETE SET NULL
);
CREATE INDEX ix_jobs_state ON jobs (state);
"""

DIGEST = "ab" + "0" * 62
OWNED = ("datasets", "models", "jobs", "indexes")  # the tables 0002_visibility gives a visibility column


def _v0_rows() -> dict[str, list[dict]]:
    """One or more rows in every table of the first release, as the store wrote them (JSON as text)."""
    return {
        "datasets": [dict(id=1, owner="local", name="birds", version=3, source="upload:birds.zip",
                          created_at=1700000000.5, updated_at=1700000100.25),
                     dict(id=2, owner="ana", name="cells", version=1, source=None,
                          created_at=1700000200.0, updated_at=1700000200.0)],
        "blobs": [dict(hash=DIGEST, ext="png", width=64, height=48, grayscale=0, nbytes=0)],  # nbytes set below
        "epoch_metrics": [dict(id=1, run="1", epoch=0, metrics=json.dumps({"train_loss": 1.25, "lr": 0.001})),
                          dict(id=2, run="1", epoch=1, metrics=json.dumps({"train_loss": 0.5, "eval_acc": 0.75}))],
        "items": [dict(id=1, dataset_id=1, blob=DIGEST, source_path="robin/1.png", split="train", video=None,
                       video_time=None, created_at=1700000001.0),
                  dict(id=2, dataset_id=1, blob=DIGEST, source_path="clip.mp4#12", split="val", video="clip.mp4",
                       video_time=2.5, created_at=1700000002.0)],
        "concepts": [dict(id=1, dataset_id=1, name="robin"), dict(id=2, dataset_id=1, name="wren")],
        "import_reports": [dict(id=1, dataset_id=1, version=1, created_at=1700000003.0,
                                report=json.dumps({"imported": 2, "skipped": [{"path": "bad.jpg", "why": "bad"}]}))],
        "models": [dict(id=1, owner="local", name="birds-resnet", kind="classifier", template="Studio_ResNet18",
                        dataset_id=1, dataset_version=3, params=json.dumps({"epochs": 2, "lr": 0.001}),
                        concepts=json.dumps(["robin", "wren"]), preprocess=json.dumps({"size": 224}),
                        metrics=json.dumps({"accuracy": 0.9}), path="models/1", train_seconds=12.5, run="1",
                        base_model_id=None, created_at=1700000300.0)],
        "indexes": [dict(id=1, owner="local", name="birds-general", dataset_id=1, dataset_version=3, model="general",
                         dim=1280, count=2, index_type="flat", params=json.dumps({"metric": "cosine"}),
                         path="indexes/1", build_seconds=0.75, created_at=1700000400.0)],
        "labels": [dict(item_id=1, concept_id=1), dict(item_id=2, concept_id=2)],
        "boxes": [dict(id=1, item_id=1, concept_id=1, x=1.5, y=2.0, w=30.0, h=20.25)],
        "jobs": [dict(id=1, owner="local", type="train", state="succeeded", config=json.dumps({"template": "x"}),
                      model_id=1, index_id=None, pid=4242, cancel_requested=0, progress=json.dumps({"epoch": 2}),
                      error=None, traceback=None, created_at=1700000250.0, started_at=1700000251.0,
                      finished_at=1700000299.0, heartbeat_at=1700000298.0, parent_id=None, resume=0, attempts=1,
                      claim="abc", host="box", slot=0, result=json.dumps({"model_id": 1}),
                      history=json.dumps([{"epoch": 0}]), series=json.dumps([[0.5, 1.0, 0.001]])),
                 dict(id=2, owner="ana", type="index", state="failed", config=json.dumps({}), model_id=None,
                      index_id=1, pid=None, cancel_requested=1, progress=None, error="boom", traceback="Traceback ...",
                      created_at=1700000500.0, started_at=None, finished_at=None, heartbeat_at=None, parent_id=1,
                      resume=1, attempts=0, claim=None, host=None, slot=None, result=None, history=None,
                      series=None)],
    }


def _write_v0_store(home: Path) -> dict[str, list[dict]]:
    """A data directory as the first release left it: the database from frozen DDL, rows, a blob and its thumbnail."""
    home.mkdir(parents=True, exist_ok=True)
    blob, thumb = blob_file(DIGEST, "png"), thumb_file(DIGEST)
    for path in (blob, thumb):
        path.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    thumb.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(200)) + b"\xff\xd9")
    rows = _v0_rows()
    rows["blobs"][0]["nbytes"] = blob.stat().st_size
    db = sqlite3.connect(home / "studio.db")
    db.executescript("PRAGMA journal_mode=WAL;" + V0_DDL)
    with db:
        for table, table_rows in rows.items():
            cols = list(table_rows[0])
            db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                           [tuple(r[c] for c in cols) for r in table_rows])
    db.close()
    return rows


def _read(db_path: Path, table: str, cols: list[str]) -> list[dict]:
    db = sqlite3.connect(db_path)
    try:
        cur = db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY rowid")
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        db.close()


def _sqlite_master(db_path: Path) -> dict[str, str]:
    """Each table's and index's DDL, whitespace collapsed, without Alembic's own table."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'alembic_version'")
        return {name: re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")")
                for name, sql in rows}
    finally:
        db.close()


def _url(db: Path | str) -> str:
    """A SQLite file's URL, or the URL itself (a PostgreSQL database of the ``store_backend`` fixture)."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


def _version(db_path: Path | str) -> list[str]:
    if isinstance(db_path, str):
        eng = sa.create_engine(db_path)
        try:
            with eng.connect() as conn:
                return list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
        finally:
            eng.dispose()
    db = sqlite3.connect(db_path)
    try:
        return [r[0] for r in db.execute("SELECT version_num FROM alembic_version")]
    finally:
        db.close()


def _alembic_head() -> str:
    return ScriptDirectory(str(migrate.MIGRATIONS)).get_current_head()


def _run(db_path: Path | str, name: str, revision: str) -> None:
    """Run one Alembic command (upgrade, downgrade, stamp) on a SQLite file (or a database URL)."""
    eng = sa.create_engine(_url(db_path))
    try:
        migrate.run(eng, name, revision)
    finally:
        eng.dispose()


def _differences(db_path: Path | str) -> list:
    eng = sa.create_engine(_url(db_path))
    try:
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(ctx, metadata)
    finally:
        eng.dispose()


@pytest.fixture
def database(store_backend, deeptrain_home) -> Path | str:
    """The store's database on each backend: the SQLite file in the data directory, or a fresh PostgreSQL database's
    URL (``DEEPTRAIN_DB_URL``, set by the ``store_backend`` fixture)."""
    deeptrain_home.mkdir(parents=True, exist_ok=True)
    return os.environ["DEEPTRAIN_DB_URL"] if store_backend == "postgres" else deeptrain_home / "studio.db"


@pytest.fixture
def fresh_engines(monkeypatch):
    """An empty per-URL engine cache, so each open in a test really runs the upgrade path."""
    monkeypatch.setattr(store_engine, "_engines", {})


def test_head_found_without_alembic_matches_alembic():
    """The cheap head (revision files read as text) is Alembic's head, and every revision id is its file's stem."""
    assert migrate.head() == _alembic_head()
    for rev in ScriptDirectory(str(migrate.MIGRATIONS)).walk_revisions():
        assert Path(rev.path).stem == rev.revision


def test_baseline_is_exactly_the_first_release_schema(tmp_path):
    """0001_baseline on an empty database writes the same DDL as create_all did for the first release."""
    frozen, migrated = tmp_path / "frozen.db", tmp_path / "migrated.db"
    db = sqlite3.connect(frozen)
    db.executescript(V0_DDL)
    db.close()
    _run(migrated, "upgrade", migrate.BASELINE)
    assert _sqlite_master(migrated) == _sqlite_master(frozen)
    assert _version(migrated) == [migrate.BASELINE]


def test_existing_store_is_upgraded_in_place(deeptrain_home, fresh_engines):
    rows = _write_v0_store(deeptrain_home)
    db_path = deeptrain_home / "studio.db"
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (blob_file(DIGEST, "png"), thumb_file(DIGEST))}

    eng = store_engine.engine()

    assert str(eng.url.database) == str(db_path)
    assert _version(db_path) == [_alembic_head()]
    for table, before in rows.items():
        assert _read(db_path, table, list(before[0])) == before, table
    for table in OWNED:
        after = _read(db_path, table, ["id", "owner", "visibility"])
        assert after == [{"id": r["id"], "owner": r["owner"], "visibility": "private"} for r in rows[table]], table
    for path, (content, mtime) in files.items():
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, path
    with eng.connect() as conn:  # the current schema reads the upgraded rows, JSON decoded, visibility filled in
        models = metadata.tables["models"]
        model = conn.execute(sa.select(models)).one()._mapping
        assert model["visibility"] == "private" and model["concepts"] == ["robin", "wren"]
    assert _differences(db_path) == []


def test_fresh_store_gets_the_full_schema_at_head(deeptrain_home, fresh_engines, capsys):
    root = logging.getLogger()
    logging_before = (root.level, list(root.handlers), logging.getLogger("alembic").level)
    store_engine.engine()
    assert capsys.readouterr() == ("", "")  # Alembic stays quiet ...
    assert (root.level, list(root.handlers), logging.getLogger("alembic").level) == logging_before  # ... by itself
    db_path = deeptrain_home / "studio.db"
    assert _version(db_path) == [_alembic_head()]
    db = sqlite3.connect(db_path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert tables == set(metadata.tables) | {"alembic_version"}
    assert (deeptrain_home / "studio.db.lock").exists()  # the upgrade ran under the file lock beside the database
    assert _differences(db_path) == []


def test_opening_at_head_is_a_cheap_no_op(deeptrain_home, fresh_engines, monkeypatch):
    store_engine.engine()
    db_path = deeptrain_home / "studio.db"
    ddl = _sqlite_master(db_path)

    def no_alembic(*_args, **_kwargs):
        raise AssertionError("Alembic ran on a database already at head")

    monkeypatch.setattr(migrate, "_command", no_alembic)
    monkeypatch.setattr(migrate, "_exclusive", no_alembic)
    monkeypatch.setattr(store_engine, "_engines", {})
    store_engine.engine()  # a second process opening the same directory
    eng = sa.create_engine(f"sqlite:///{db_path}")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        migrate.upgrade(eng)
        timings.append(time.perf_counter() - start)
    eng.dispose()
    assert min(timings) < 0.05, timings  # about a millisecond when measured; 100 ms is the budget
    assert _sqlite_master(db_path) == ddl and _version(db_path) == [_alembic_head()]


_OPEN_STORE = """
import os, sys, time
os.environ["DEEPTRAIN_HOME"] = sys.argv[1]  # and DEEPTRAIN_DB_URL as the test set it (PostgreSQL) or not (SQLite)
from core.store.engine import engine
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # every process opens the store at the same moment: once all are ready
    time.sleep(0.001)
engine()
print("ok")
"""


@pytest.mark.parametrize("start, store_backend", [("empty", "sqlite"), ("first_release", "sqlite"),
                                                  pytest.param("empty", "postgres", marks=pytest.mark.postgres)],
                         indirect=["store_backend"])
def test_processes_opening_one_store_at_once(database, start):
    """Three processes (fresh interpreters, as workers are) open one store at the same moment: all succeed, the
    schema is at head once, and an old store's rows survive. (Subprocesses rather than multiprocessing's spawn: a
    Streamlit AppTest earlier in the session replaces ``__main__``, which spawn would re-run in each child.)"""
    import subprocess
    import sys

    home = Path(os.environ["DEEPTRAIN_HOME"])
    rows = _write_v0_store(home) if start == "first_release" else None
    go = home / "go"  # created once every interpreter has started and imported the store
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, str(home), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(3)]
    try:
        ready = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
    finally:
        go.touch()
    assert ready == ["ready"] * 3, [p.communicate(timeout=60) for p in procs]
    outcomes = [p.communicate(timeout=300) for p in procs]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, outcomes)] == [(0, "ok")] * 3, outcomes
    db_path = database
    assert _version(db_path) == [_alembic_head()]
    assert _differences(db_path) == []
    if rows is not None:
        for table, before in rows.items():
            assert _read(db_path, table, list(before[0])) == before, table


def test_migrations_match_the_schema_module(database):
    """The revisions build exactly ``core.store.schema`` (on SQLite and on PostgreSQL): a column added there without a
    revision fails here."""
    db_path = database
    _run(db_path, "upgrade", "head")
    assert _differences(db_path) == [], "core/store/schema.py and core/store/migrations/versions/ disagree"
    # The check bites: at the baseline, the visibility columns are reported missing.
    _run(db_path, "downgrade", migrate.BASELINE)
    missing = sorted((d[2], d[3].name) for d in _differences(db_path) if d[0] == "add_column")
    assert missing == sorted((t, "visibility") for t in OWNED)


def test_downgrade_returns_to_the_first_release(deeptrain_home):
    """0002's downgrade drops only the column (no table rebuild, no cascade), and 0001's drops every table."""
    rows = _write_v0_store(deeptrain_home)
    db_path = deeptrain_home / "studio.db"
    frozen = _sqlite_master(db_path)
    _run(db_path, "stamp", migrate.BASELINE)
    _run(db_path, "upgrade", "head")
    _run(db_path, "downgrade", migrate.BASELINE)
    assert _sqlite_master(db_path) == frozen
    for table, before in rows.items():
        assert _read(db_path, table, list(before[0])) == before, table
    _run(db_path, "downgrade", "base")
    assert _sqlite_master(db_path) == {}


def test_a_partial_old_store_is_refused(deeptrain_home, fresh_engines):
    """Some of the studio's tables, no version table: not something to guess about, and nothing is changed."""
    deeptrain_home.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(deeptrain_home / "studio.db")
    db.executescript(V0_DDL.split("CREATE TABLE blobs")[0])
    db.close()
    with pytest.raises(RuntimeError, match="not a studio database"):
        store_engine.engine()
    assert set(_sqlite_master(deeptrain_home / "studio.db")) == {"datasets"}


def test_a_store_from_a_newer_release_is_refused(deeptrain_home, fresh_engines):
    """A revision this code lacks means a newer release upgraded the store: say so rather than fail inside Alembic."""
    store_engine.engine()
    db = sqlite3.connect(deeptrain_home / "studio.db")
    with db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    db.close()
    store_engine._engines.clear()
    with pytest.raises(RuntimeError, match="9999_from_the_future.*newer release"):
        store_engine.engine()


def test_a_failed_upgrade_leaves_the_store_as_it_was(deeptrain_home, fresh_engines):
    """The stamp and every ALTER share one transaction: when the third ALTER fails, the first two are rolled back."""
    _write_v0_store(deeptrain_home)
    db_path = deeptrain_home / "studio.db"
    db = sqlite3.connect(db_path)
    db.execute("ALTER TABLE jobs ADD COLUMN visibility VARCHAR")  # 0002 will fail on jobs, after datasets and models
    db.close()
    before = _sqlite_master(db_path)
    with pytest.raises(sa.exc.OperationalError, match="duplicate column"):
        store_engine.engine()
    assert _sqlite_master(db_path) == before
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'").fetchone() == (0,)
    db.close()
