"""The store on a real PostgreSQL server: its transactions keep SQLite's guarantees, worker processes claim and beat,
``doctor`` names and checks the database, and ``python -m core store copy`` moves a SQLite store there row for row.

Tests taking the ``store_backend`` fixture run on SQLite and on PostgreSQL; the others need the server and are marked
``postgres``. Without a server (``DEEPTRAIN_TEST_PG_URL``) the PostgreSQL ones skip and say why; with
``DEEPTRAIN_REQUIRE_POSTGRES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from core.cli import main
from core.data import service
from core.data.importer import import_dataset
from core.store import jobs as jstore
from core.store.schema import metadata
from tests.conftest import ROOT
from tests.jobs_support import tiny  # noqa: F401 (fixture)
from tests.pg import fresh_database

store_engine = importlib.import_module("core.store.engine")  # the module, not the function the package exports


@pytest.fixture
def pg_store(deeptrain_home, monkeypatch) -> str:
    """The studio on a fresh PostgreSQL database (``DEEPTRAIN_DB_URL``); yields its URL."""
    with fresh_database() as url:
        monkeypatch.setenv("DEEPTRAIN_DB_URL", url)
        yield url


def _rows(url: str) -> dict[str, list[dict]]:
    """Every row of every table, in primary-key order, read through the schema's types (JSON decoded)."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            return {t.name: [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                    for t in metadata.sorted_tables}
    finally:
        eng.dispose()


def _sql_nulls(url: str) -> dict[str, int]:
    """How many SQL NULLs each JSON column holds (a JSON ``null`` is not one)."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            return {f"{t.name}.{c.name}": conn.execute(sa.select(sa.func.count()).where(c.is_(None))).scalar_one()
                    for t in metadata.sorted_tables for c in t.columns if isinstance(c.type, sa.JSON)}
    finally:
        eng.dispose()


def _fill_every_table(home: Path, src: Path) -> None:
    """A store with something in every table: a folder import and a COCO import (boxes), a model with its epoch
    metrics and folder, an index with its folder, jobs in several states (JSON null and SQL NULL), users."""
    from core.store import indexes, models, users

    import_dataset("local", src, "photos", workers=1)
    photos = sorted(src.rglob("*.jpg"))[:2]
    images = []
    for n, p in enumerate(photos, 1):
        (home.parent / p.name).write_bytes(p.read_bytes())
        width, height = Image.open(p).size
        images.append({"id": n, "file_name": p.name, "width": width, "height": height})
    coco = home.parent / "coco.json"
    coco.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "thing"}],
                                "annotations": [{"id": n, "image_id": n, "category_id": 1, "bbox": [1, 2, 30, 20]}
                                                for n in (1, 2)]}))
    import_dataset("local", coco, "boxes", workers=1)
    dataset_id = service.get_dataset("local", "photos")["id"]
    folder = home / "models" / "m1"
    folder.mkdir(parents=True)
    model_id = models.register_model(owner="local", name="m1", kind="classifier", template="Studio_ResNet18",
                                     params={"epochs": 1}, concepts=["accordion", "anchor", "ant"],
                                     preprocess={"size": 32}, path=folder, dataset_id=dataset_id, dataset_version=1,
                                     metrics={"accuracy": 0.5}, run="r1")
    models.add_epoch_metrics("r1", 1, {"train_loss": 0.25})
    (home / "indexes" / "i1").mkdir(parents=True)
    indexes.create_index("local", "i1", dataset_id, 1, "general", 8, 18, "flat", {"metric": "cosine"},
                         str(home / "indexes" / "i1"), 0.5)
    done = jstore.insert_job("local", "train", {"dataset": "photos"})
    assert jstore.claim_next(5, 1)["id"] == done
    jstore.beat(done, {"fraction": 1.0}, [[1.0, 0.5, 0.01]])
    jstore.add_history(done, 1, {"train_loss": 0.5})
    assert jstore.finish(done, "succeeded", result={"model_id": model_id, "note": None})
    jstore.insert_job("ana", "index", {"dataset": "photos", "extra": None})  # queued: progress and result SQL NULL
    users.seen("ana", "proxy", "member")


@pytest.mark.postgres
def test_store_copy_moves_every_row_and_the_app_works_on_the_copy(small_folder, deeptrain_home, capsys, monkeypatch):
    _fill_every_table(deeptrain_home, small_folder)
    sqlite_url = f"sqlite:///{deeptrain_home / 'studio.db'}"
    before, nulls = _rows(sqlite_url), _sql_nulls(sqlite_url)
    datasets = service.list_datasets("local")
    page = service.find_items("local", "photos", limit=100)
    with fresh_database() as url:
        assert main(["store", "copy", "--to", url, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["source"] == f"SQLite file {deeptrain_home / 'studio.db'}" and "***" in report["target"]
        counts = {t: n["target"] for t, n in report["tables"].items()}
        assert counts == {t: len(rows) for t, rows in before.items()}
        assert all(counts[t] for t in ("datasets", "blobs", "items", "concepts", "labels", "boxes", "import_reports",
                                       "models", "epoch_metrics", "indexes", "jobs", "users")), counts
        assert _rows(url) == before  # every row, every value, ids kept
        assert _sql_nulls(url) == nulls and nulls["jobs.progress"] == 1  # SQL NULL stays NULL, JSON null stays JSON

        assert main(["store", "copy", "--to", url]) == 2  # never into a database that holds rows
        assert f"already holds rows (blobs: {counts['blobs']}, datasets: 2," in capsys.readouterr().err

        monkeypatch.setenv("DEEPTRAIN_DB_URL", url)  # the studio, same data directory, on the copy
        assert service.list_datasets("local") == datasets
        assert service.find_items("local", "photos", limit=100) == page
        item = page[0]["item_id"]
        service.set_item_labels("local", item, ["brand-new"])  # a new concept: its id comes from the sequence
        assert service.find_items("local", "photos", limit=1)[0]["labels"] == ["brand-new"]
        again = import_dataset("local", small_folder, "again", workers=1)
        assert again["items"] == 18 and service.get_dataset("local", "again")["id"] > max(d["id"] for d in datasets)
        assert jstore.insert_job("local", "train", {}) > max(j["id"] for j in before["jobs"])

        assert main(["doctor", "--json", "--fast"]) == 0
        doctor = json.loads(capsys.readouterr().out)
        assert doctor["errors"] == [] and doctor["store"]["database"]["dialect"] == "postgresql"
        assert doctor["store"]["database"]["name"] == report["target"]
        assert doctor["store"]["database"]["server"].startswith("PostgreSQL ")
        assert doctor["store"]["item_files"]["items_missing_file"] == 0  # the files stayed where they were

        eng = sa.create_engine(url)  # damage only PostgreSQL has: a sequence behind its rows (a hand-made copy)
        with eng.begin() as conn:
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('items', 'id'), 5)"))
        eng.dispose()
        assert main(["doctor", "--json", "--fast"]) == 1
        errors = json.loads(capsys.readouterr().out)["errors"]
        assert len(errors) == 1 and errors[0].startswith("database: items: the next id would be 6 but the rows reach")


@pytest.mark.postgres
def test_doctor_names_a_server_that_does_not_answer(deeptrain_home, monkeypatch, capsys):
    monkeypatch.setenv("DEEPTRAIN_DB_URL", "postgresql+psycopg://studio:secret@127.0.0.1:9/nothing")  # port 9: closed
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "cannot open postgresql+psycopg://studio:***@127.0.0.1:9/nothing" in out and "secret" not in out


# ------------------------------------------------------------------------------------------------ transactions

def test_a_read_sees_one_snapshot_while_others_commit(store_backend, deeptrain_home):
    """Every query inside ``read()`` sees the same committed state, on both databases (PostgreSQL: REPEATABLE READ;
    at its default READ COMMITTED the second count below would see the new job)."""
    from core.store import read

    jstore.insert_job("local", "train", {})
    with read() as conn:
        first = conn.execute(sa.select(sa.func.count()).select_from(jstore.jobs)).scalar_one()
        jstore.insert_job("local", "train", {})  # another connection commits meanwhile
        second = conn.execute(sa.select(sa.func.count()).select_from(jstore.jobs)).scalar_one()
    assert first == second == 1 and len(jstore.list_jobs()) == 2


_HOLD = """
import sys, time
import sqlalchemy as sa
eng = sa.create_engine(sys.argv[1])
with eng.begin() as conn:
    conn.execute(sa.text(sys.argv[2]))
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _hold(url: str, sql: str, seconds: float) -> subprocess.Popen:
    """Another process that runs ``sql`` in a transaction and keeps it open for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, url, sql, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.postgres
def test_postgres_writers_wait_retry_then_say_busy_and_heartbeats_pass(pg_store, monkeypatch):
    """Another process holds the studio's write lock: a write waits (lock_timeout), retries after random pauses and
    goes through when the lock comes free, or gets "stayed busy" past its attempts; a heartbeat (the job's row lock
    only) passes at once meanwhile. A row lock held elsewhere stops the heartbeat, which then says busy too, rolled
    back. Timeouts shortened so the test takes seconds (the studio's: 10 s a try, 6 tries)."""
    from core.store import models
    from core.store.engine import StoreBusy

    monkeypatch.setattr(store_engine, "BUSY_TIMEOUT_S", 0.2)  # lock_timeout of the connections made from now on
    monkeypatch.setattr(store_engine, "RETRIES", 3)
    monkeypatch.setattr(store_engine, "RETRY_PAUSE_S", 0.2)
    job = jstore.insert_job("local", "train", {})
    jstore.claim_next(5, 1)
    lock = f"SELECT pg_advisory_xact_lock({store_engine._PG_WRITE_LOCK})"

    holder = _hold(pg_store, lock, 0.6)
    t0 = time.monotonic()
    assert jstore.beat(job, {"step": 1}) is False and time.monotonic() - t0 < 0.15  # no wait behind the write lock
    models.add_epoch_metrics("run-1", 1, {"loss": 1.0})  # waits, retries, then writes
    assert time.monotonic() - t0 > 0.3 and models.get_epoch_metrics("run-1")[0]["loss"] == 1.0
    holder.wait()

    holder = _hold(pg_store, lock, 8)
    t0 = time.monotonic()
    with pytest.raises(StoreBusy, match=r"stayed busy: another process held its write lock for over 1 s; try again"):
        models.add_epoch_metrics("run-1", 2, {"loss": 0.5})
    assert time.monotonic() - t0 < 4
    holder.kill()
    holder.wait()
    assert [m["epoch"] for m in models.get_epoch_metrics("run-1")] == [1]

    holder = _hold(pg_store, f"SELECT id FROM jobs WHERE id = {job} FOR UPDATE", 8)
    with pytest.raises(StoreBusy, match="stayed busy"):
        jstore.beat(job, {"step": 2})
    holder.kill()
    holder.wait()
    assert jstore.get_job(job)["progress"] == {"step": 1}
    jstore.beat(job, {"step": 3})
    assert jstore.get_job(job)["progress"] == {"step": 3}


_CLAIMER = """
import json, random, sys, time
from core.store import jobs
start, out, claimed = float(sys.argv[1]), sys.argv[2], []
while time.time() < start:
    time.sleep(0.001)
while True:
    job = jobs.claim_next(1, 1)
    if job is None:
        if not jobs.list_jobs(states=("queued",)):
            break
        time.sleep(random.uniform(0, 0.002))
        continue
    t_claimed = time.time()
    jobs.beat(job["id"], {"by": out})
    time.sleep(0.003)  # the job runs
    t_finish = time.time()
    assert jobs.finish(job["id"], "succeeded")
    claimed.append([job["id"], t_claimed, t_finish])
    time.sleep(0.005)  # a pump's next round
json.dump(claimed, open(out, "w"))
"""


def test_four_processes_claim_each_job_once_and_never_two_at_a_time(store_backend, tmp_path):
    """Four pump processes claim from one queue with a limit of one active job: every job is claimed by exactly one
    of them, once, and no claim lands while another claimed job is still unfinished."""
    queued = [jstore.insert_job(f"user{n % 3}", "train", {}) for n in range(24)]
    start = time.time() + 1.5  # every interpreter started and imported
    outs = [tmp_path / f"claims-{k}.json" for k in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(start), str(out)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for out in outs]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    claims = [c for out in outs for c in json.loads(out.read_text())]
    assert sorted(c[0] for c in claims) == queued  # each once
    spans = sorted((t0, t1) for _, t0, t1 in claims)
    overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert not overlaps, f"{len(overlaps)} claims while another job was active, e.g. {overlaps[0]}"
    assert {j["state"] for j in jstore.list_jobs()} == {"succeeded"}
    assert all(j["attempts"] == 1 for j in jstore.list_jobs())
    assert len({p for p in (j["progress"]["by"] for j in jstore.list_jobs())}) > 1  # the work really was shared


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.usefixtures("pg_store", "tiny")  # in this order: the dataset goes to PostgreSQL
def test_a_worker_process_beats_and_reports_progress_on_postgres():
    """A real job: the queue starts a worker process, which claims, beats, writes progress and epoch metrics and
    registers its model, all in PostgreSQL."""
    from core import jobs
    from core.store import models
    from tests.jobs_support import train_config

    job_id = jobs.submit("local", "train", train_config(epochs=1, items=40))
    st = jobs.wait("local", job_id, timeout=180)
    assert st["state"] == "succeeded", st["error"]
    job = jstore.get_job(job_id)
    assert job["heartbeat_at"] > job["started_at"] and job["progress"]["fraction"] == 1.0
    assert [h["epoch"] for h in job["history"]] == [1] and job["series"]
    assert models.get_model_by_id(st["model_id"])["dataset_id"] == service.get_dataset("local", "tiny")["id"]
    eng = sa.create_engine(os.environ["DEEPTRAIN_DB_URL"])
    with eng.connect() as conn:  # written to the server, not to a SQLite file beside it
        assert conn.execute(sa.text("SELECT state FROM jobs WHERE id = :i"), {"i": job_id}).scalar() == "succeeded"
    eng.dispose()
