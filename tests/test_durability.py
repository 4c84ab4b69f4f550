"""Nothing lost: stored images survive concurrent imports and deletes, writers never meet "database is locked",
bad archives and COCO files leave the store as it was, and a full disk fails cleanly.

Every test here uses real processes and real files; the concurrent ones run for a few seconds each. Faults are real
where they can be (a process killed mid-commit, a concurrent delete); a full disk is injected at the one write
helper every store write goes through (``core.fsutil.write_file``/``open_write``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.data import service
from core.data.importer import import_dataset
from core.errors import UserError
from core.store import engine
from core.store.schema import blobs, items
from tests.conftest import ROOT, caltech_slice
from tests.durability_support import OVERTIME_S

# Seconds the contention tests' processes write at once (each role also works on until it has done its share, so the
# assertions hold at any length). Small by default for the suite; DEEPTRAIN_STRESS_SECONDS=60 for a longer soak.
STRESS_S = float(os.environ.get("DEEPTRAIN_STRESS_SECONDS", "4"))


def stored_files() -> list[tuple[int, Path, str]]:
    """(item id, stored file, content hash) of every item in the store."""
    from core.store.datasets import blob_file

    with engine().connect() as conn:
        rows = conn.execute(sa.select(items.c.id, items.c.blob, blobs.c.ext)
                            .join(blobs, blobs.c.hash == items.c.blob)).all()
    return [(r.id, blob_file(r.blob, r.ext), r.blob) for r in rows]


def assert_every_item_file_is_sound() -> int:
    """Every item's file exists and hashes to its id; returns how many items there are."""
    rows = stored_files()
    missing = [(i, str(p)) for i, p, _ in rows if not p.is_file()]
    assert not missing, f"{len(missing)} of {len(rows)} items lost their file, e.g. {missing[:3]}"
    wrong = [(i, str(p)) for i, p, h in rows if hashlib.sha256(p.read_bytes()).hexdigest() != h]
    assert not wrong, f"{len(wrong)} files do not hash to their id, e.g. {wrong[:3]}"
    return len(rows)


def assert_no_file_without_a_row() -> None:
    """Once the collector has run, every file under blobs/ and thumbs/ belongs to a blob row."""
    from core import paths
    from core.store import integrity

    integrity.collect_orphans()
    with engine().connect() as conn:
        known = set(conn.execute(sa.select(blobs.c.hash)).scalars())
    for sub in ("blobs", "thumbs"):
        files = [p for p in paths.subdir(sub).rglob("*") if p.is_file()]
        stray = [str(p) for p in files if p.name.split(".")[0] not in known]
        assert not stray, f"{len(stray)} files in {sub}/ have no row, e.g. {stray[:3]}"


# ------------------------------------------------------------------------------------------------ blobs and deletes

@pytest.mark.usefixtures("store_backend")  # SQLite and PostgreSQL
def test_import_while_a_dataset_with_the_same_images_is_deleted_keeps_every_file(small_folder):
    """The decoder finds the images stored already (d1 has them) and stages nothing; d1 is deleted before d2
    commits. Before the fix d2 ended with its items and no files (3 classes x 6 photos: 18 items, 0 files)."""
    import_dataset("local", small_folder, "d1", workers=1)

    def progress(fraction: float, message: str) -> None:
        if message == "Saving":  # decoded, about to commit: the moment another user deletes d1
            service.delete_dataset("local", "d1")

    import_dataset("local", small_folder, "d2", workers=1, progress=progress)
    assert service.get_dataset("local", "d2")["items"] == 18
    assert assert_every_item_file_is_sound() == 18
    assert_no_file_without_a_row()


@pytest.mark.usefixtures("store_backend")  # SQLite and PostgreSQL
def test_an_import_that_rolls_back_leaves_the_files_another_import_uses(small_folder, tmp_path, monkeypatch):
    """Import Y moves its new files into the store and then fails; meanwhile import X (another process) decoded the
    same photos, found them stored, and commits after Y rolled back. X's items must keep their files (before the fix
    Y's rollback unlinked all 18 of them)."""
    from core.store import datasets as store

    flags = {n: tmp_path / n for n in ("x-started", "x-decode", "x-decoded", "x-commit")}

    def wait_for(flag: Path, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert time.monotonic() < deadline and (proc is None or proc.poll() is None), f"no {flag.name}"
            time.sleep(0.01)

    code = (
        "import os, time\n"
        "from core.data.importer import import_dataset\n"
        "def wait(name):\n"
        f"    while not os.path.exists(os.path.join({str(tmp_path)!r}, name)): time.sleep(0.01)\n"
        "def progress(fraction, message):\n"
        "    if message == 'Reading the source':\n"
        f"        open({str(flags['x-started'])!r}, 'w').close(); wait('x-decode')\n"
        "    if message == 'Saving':\n"
        f"        open({str(flags['x-decoded'])!r}, 'w').close(); wait('x-commit')\n"
        f"import_dataset('local', {str(small_folder)!r}, 'x', workers=1, progress=progress)\n"
    )
    x = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_for(flags["x-started"], x)  # X waits before reading its source
    real_move = store._move_tree
    calls: list[Path] = []

    def failing_move(src, dest, moved):
        real_move(src, dest, moved)
        calls.append(dest)
        if len(calls) == 2:  # blobs and thumbs are in the store: X decodes now, then Y fails before its commit
            flags["x-decode"].touch()
            wait_for(flags["x-decoded"], x)
            raise OSError("injected failure after the files moved in")

    monkeypatch.setattr(store, "_move_tree", failing_move)
    with pytest.raises(OSError, match="injected"):
        import_dataset("local", small_folder, "y", workers=1)
    monkeypatch.setattr(store, "_move_tree", real_move)
    flags["x-commit"].touch()
    assert x.wait(timeout=120) == 0
    assert service.dataset_names("local") == ["x"]
    assert assert_every_item_file_is_sound() == 18
    assert_no_file_without_a_row()


def _run_roles(tmp_path: Path, roles: list[tuple[str, int, object]], seconds: float,
               env: dict | None = None) -> list[dict]:
    """Start every role as its own process at once, let them work for ``seconds`` (longer where one is short of its
    share, ``durability_support.SHARE``), return their reports."""
    deadline = time.time() + seconds
    procs = []
    for n, (role, k, arg) in enumerate(roles):
        out = tmp_path / f"report-{n}.json"
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "tests.durability_support", role, str(out), str(deadline), str(k), json.dumps(arg)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}), out))
    reports = []
    for proc, out in procs:
        assert proc.wait(timeout=seconds + OVERTIME_S + 180) == 0
        reports.append(json.loads(out.read_text()))
    return reports


def test_concurrent_imports_deletes_and_reimports_lose_no_file(tmp_path, store_backend):
    """Three processes import overlapping folders, delete and import again for STRESS_S seconds (and on until each
    has done its share): every item keeps a sound file, each process's datasets hold what it imported, and the
    collector leaves no file without a row."""
    folders = [str(caltech_slice(tmp_path / f"f{n}", classes, per_class=6)) for n, classes in
               enumerate((("accordion", "anchor"), ("anchor", "ant"), ("ant", "accordion")))]
    seconds = STRESS_S
    reports = _run_roles(tmp_path, [("importer", k, folders) for k in range(3)], seconds=seconds)
    errors = [e for r in reports for e in r["errors"]]
    assert not errors, errors[0]
    assert sum(r["imports"] for r in reports) >= 6 and sum(r["deletes"] for r in reports) >= 3, reports
    holds = {name: n for r in reports for name, n in r["holds"].items()}
    print(f"3 importers for {seconds} s on {store_backend}: {sum(r['imports'] for r in reports)} imports, "
          f"{sum(r['deletes'] for r in reports)} deletes")
    assert {d["name"]: d["items"] for d in service.list_datasets("local")} == holds
    assert assert_every_item_file_is_sound() == sum(holds.values())
    assert_no_file_without_a_row()


# ------------------------------------------------------------------------------------------------ contention

@pytest.mark.usefixtures("store_backend")  # SQLite and PostgreSQL
def test_eight_writers_at_once_never_meet_a_locked_database(tmp_path, monkeypatch):
    """Eight processes (3 importing and deleting, 3 relabelling two datasets, 2 queueing and cancelling jobs, plus the
    job worker the queue starts) write for STRESS_S seconds (and on until each has done its share): nobody sees
    "database is locked" or a constraint error, and the store holds exactly what each says it committed (datasets and
    their items, one version per relabelling, one row per job queued). Before the fix, relabelling one dataset from
    two processes failed with UNIQUE and FOREIGN KEY errors (a concept read outside the write transaction was created
    or dropped by the other process meanwhile)."""
    from core import jobs
    from tests.jobs_support import cleanup

    monkeypatch.setenv("DEEPTRAIN_MAX_JOBS", "1")
    monkeypatch.setenv("DEEPTRAIN_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("DEEPTRAIN_MAX_QUEUED_JOBS", "100000")
    src = caltech_slice(tmp_path / "src", ("accordion", "anchor", "ant"), per_class=6)
    for name in ("base", "lab0", "lab1"):
        import_dataset("local", src, name, workers=1)
    folders = [str(caltech_slice(tmp_path / f"f{n}", classes, per_class=4)) for n, classes in
               enumerate((("accordion", "barrel"), ("barrel", "bass"), ("bass", "accordion")))]
    roles = ([("importer", k, folders) for k in range(3)] + [("labeller", k, f"lab{k % 2}") for k in range(3)]
             + [("submitter", k, "base") for k in range(2)])
    try:
        reports = _run_roles(tmp_path, roles, seconds=STRESS_S)
    finally:
        cleanup()
    errors = [e for r in reports for e in r["errors"]]
    assert not errors, f"{len(errors)} errors, e.g. {errors[0]}"
    assert not any("locked" in e for e in errors)
    importers, labellers, submitters = reports[:3], reports[3:6], reports[6:]
    assert all(r["imports"] >= 2 for r in importers) and all(r["changes"] >= 20 for r in labellers), reports
    holds = {name: n for r in importers for name, n in r["holds"].items()}
    stored = {d["name"]: d for d in service.list_datasets("local")}
    assert {n: d["items"] for n, d in stored.items() if n.startswith("imp")} == holds
    for d in range(2):
        assert stored[f"lab{d}"]["version"] == 1 + sum(r["changes"] for k, r in enumerate(labellers) if k % 2 == d)
    submitted = sorted(i for r in submitters for i in r["submitted"])
    assert len(submitted) >= 20, submitted
    print(f"8 writers for {STRESS_S:g} s: {sum(r['imports'] for r in importers)} imports, "
          f"{sum(r['deletes'] for r in importers)} deletes, {sum(r['changes'] for r in labellers)} relabellings, "
          f"{len(submitted)} jobs queued, {sum(j['state'] == 'succeeded' for j in jobs.list_jobs('local'))} trained")
    assert sorted(j["id"] for j in jobs.list_jobs("local")) == submitted
    assert_every_item_file_is_sound()


def test_a_writer_waits_and_retries_then_says_plainly_that_the_store_is_busy(deeptrain_home, monkeypatch):
    """Another process holds the write lock. A write waits (the busy timeout), retries after random pauses, and goes
    through when the lock comes free within its attempts; past them it gets "stayed busy", never "database is
    locked". Timeouts shortened so the test takes seconds (the studio's: 10 s a try, 6 tries)."""
    import importlib

    from core.store import models
    from core.store.engine import StoreBusy

    engine_module = importlib.import_module("core.store.engine")
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(engine_module, "RETRIES", 3)
    monkeypatch.setattr(engine_module, "RETRY_PAUSE_S", 0.2)
    engine()  # created with the short timeout

    def hold_lock(seconds: float) -> subprocess.Popen:
        code = ("import sqlite3, sys, time\n"
                f"db = sqlite3.connect({str(deeptrain_home / 'studio.db')!r}, isolation_level=None)\n"
                "db.execute('BEGIN IMMEDIATE'); print('held', flush=True)\n"
                f"time.sleep({seconds}); db.execute('COMMIT')\n")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        return proc

    holder = hold_lock(0.6)
    t0 = time.monotonic()
    models.add_epoch_metrics("run-1", 1, {"loss": 1.0})  # waits, retries, then writes
    assert time.monotonic() - t0 > 0.3 and models.get_epoch_metrics("run-1")[0]["loss"] == 1.0
    holder.wait()
    holder = hold_lock(8)
    t0 = time.monotonic()
    with pytest.raises(StoreBusy, match=r"stayed busy: another process held its write lock for over 1 s; try again") \
            as err:
        models.add_epoch_metrics("run-1", 2, {"loss": 0.5})
    assert "locked" not in str(err.value) and time.monotonic() - t0 < 4
    holder.kill()
    holder.wait()
    assert [m["epoch"] for m in models.get_epoch_metrics("run-1")] == [1]


# ------------------------------------------------------------------------------------------------ bad sources

def _store_snapshot() -> tuple:
    """What a refused import must leave as it was: datasets with versions and items, every stored file, staging."""
    from core import paths

    files = sorted(str(p.relative_to(paths.home())) for sub in ("blobs", "thumbs", "staging")
                   for p in paths.subdir(sub).rglob("*"))
    return [(d["name"], d["version"], d["items"]) for d in service.list_datasets("local")], files


@pytest.mark.parametrize("order", [("a", "a/b.jpg"), ("a/b.jpg", "a")], ids=["file-first", "folder-first"])
def test_a_zip_holding_a_file_and_a_folder_of_the_same_name_is_refused(small_folder, tmp_path, order):
    import_dataset("local", small_folder, "kept", workers=1)
    before = _store_snapshot()
    photo = next(small_folder.rglob("*.jpg")).read_bytes()
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cls/ok.jpg", photo)
        for name in order:
            zf.writestr(f"cls/{name}", photo)
    with pytest.raises(UserError, match=r"clash.zip: member 'cls/a/b.jpg' .*'cls/a'.* both a file and a folder"):
        import_dataset("local", archive, "clash", workers=1)
    assert _store_snapshot() == before


def _coco(tmp_path: Path, src: Path, images: list[dict], annotations: list[dict]) -> Path:
    photos = sorted(src.rglob("*.jpg"))[:2]
    for p in photos:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    doc = {"images": [dict(im, file_name=photos[n].name, width=10_000, height=10_000) for n, im in enumerate(images)],
           "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_with_duplicate_image_ids_is_refused(small_folder, tmp_path):
    import_dataset("local", small_folder, "kept", workers=1)
    before = _store_snapshot()
    coco = _coco(tmp_path, small_folder, [{"id": 7}, {"id": 7}],
                 [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(UserError, match=r"coco.json: images\[1\] has id 7, the id of images\[0\] too; image ids must "
                                        r"be unique"):
        import_dataset("local", coco, "dup-images", workers=1)
    assert _store_snapshot() == before


def test_coco_with_duplicate_annotation_ids_is_refused(small_folder, tmp_path):
    import_dataset("local", small_folder, "kept", workers=1)
    before = _store_snapshot()
    box = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}
    coco = _coco(tmp_path, small_folder, [{"id": 1}, {"id": 2}], [dict(box, id=3), dict(box, id=3, image_id=2)])
    with pytest.raises(UserError, match=r"coco.json: annotations\[1\] has id 3, the id of annotations\[0\] too; "
                                        r"annotation ids must be unique"):
        import_dataset("local", coco, "dup-annotations", workers=1)
    assert _store_snapshot() == before


# ------------------------------------------------------------------------------------------------ a full disk

def temp_files_left() -> list[str]:
    """Temporary files anywhere in the data directory, and anything left in staging."""
    from core import paths

    home = paths.home()
    left = [str(p) for p in home.rglob("*") if ".tmp" in p.name]
    return left + [str(p) for p in paths.subdir("staging").iterdir()]


@pytest.mark.parametrize("where", ["/scratch/", "/blobs/", "/thumbs/"])
def test_a_full_disk_while_importing_fails_cleanly(small_folder, tmp_path, where):
    """The disk fills while the archive unpacks, while images are staged, or while thumbnails are: "Disk full" naming
    the import and the file, the store as it was, nothing temporary left."""
    from core.fsutil import inject_disk_full

    import_dataset("local", small_folder, "kept", workers=1)
    before = _store_snapshot()
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(caltech_slice(tmp_path / "other", ("barrel", "bass"), per_class=5).rglob("*.jpg")):
            zf.write(p, f"{p.parent.name}/{p.name}")
    with inject_disk_full(after_bytes=20_000, match=where) as fault, \
            pytest.raises(UserError, match=r"^Disk full: could not write .*more.zip.*free some space") as err:
        import_dataset("local", archive, "more", workers=1)
    assert fault.hits >= 1 and where.strip("/") in str(err.value)
    assert _store_snapshot() == before
    assert temp_files_left() == []
    import_dataset("local", archive, "more", workers=1)  # with space again, the same import works
    assert_every_item_file_is_sound()


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path):
    import torch

    from core.fsutil import inject_disk_full
    from core.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = tmp_path / "run" / "checkpoints"
    net = torch.nn.Linear(64, 8)
    save_checkpoint(ckpt, net, None, {"epoch_done": 1, "step_in_epoch": 0})
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    for after in (0, 1024):  # while writing the tensors, or (the tensors written) the JSON that commits them
        with inject_disk_full(after_bytes=after, match="checkpoints"), \
                pytest.raises(UserError, match=r"^Disk full: could not write checkpoint .*checkpoints"):
            save_checkpoint(ckpt, net, None, {"epoch_done": 2, "step_in_epoch": 0})
        fresh = torch.nn.Linear(64, 8)
        assert load_checkpoint(ckpt, fresh)["epoch_done"] == 1
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
        assert sorted(p.name for p in ckpt.iterdir() if ".tmp" in p.name) == []


def test_a_full_disk_while_exporting_keeps_the_earlier_export(small_folder, tmp_path):
    from core.data.export import export_dataset
    from core.fsutil import inject_disk_full

    import_dataset("local", small_folder, "ds", workers=1)
    out = tmp_path / "exports" / "ds.zip"
    export_dataset("local", "ds", "folder", out)
    earlier = out.read_bytes()
    with inject_disk_full(after_bytes=100_000, match=str(out.parent)), \
            pytest.raises(UserError, match=r"^Disk full: could not write the export of dataset 'ds' .*ds.zip"):
        export_dataset("local", "ds", "csv", out)
    assert out.read_bytes() == earlier and zipfile.ZipFile(out).testzip() is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds.zip"]


def test_a_full_disk_while_writing_an_index_keeps_the_index(tmp_path):
    import numpy as np

    from core.fsutil import inject_disk_full
    from core.search import index as vindex
    from core.search.service import _load_embeddings, _save_embeddings

    rng = np.random.default_rng(0)
    ids, vectors = np.arange(500, dtype=np.int64), rng.standard_normal((500, 32)).astype(np.float32)
    folder = tmp_path / "index"
    built = vindex.build(ids, vectors)
    built.save(folder / "vectors.idx")
    _save_embeddings(folder / "embeddings.npz", ids, vectors, "general")
    bigger = vindex.build(np.arange(900, dtype=np.int64), rng.standard_normal((900, 32)).astype(np.float32))
    with inject_disk_full(after_bytes=10_000, match=str(folder)):
        with pytest.raises(UserError, match=r"^Disk full: could not write search index .*vectors.idx"):
            bigger.save(folder / "vectors.idx")
        with pytest.raises(UserError, match=r"^Disk full: could not write index embeddings .*embeddings.npz"):
            _save_embeddings(folder / "embeddings.npz", np.arange(900), np.zeros((900, 32), np.float32), "general")
    assert vindex.load(folder / "vectors.idx").count == 500
    assert len(_load_embeddings(folder / "embeddings.npz")[0]) == 500
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npz", "vectors.idx"]


# ------------------------------------------------------------------------------------------------ power cuts and kills

def test_imported_files_and_their_folders_are_fsynced_before_the_commit(small_folder, monkeypatch):
    """Every stored image and thumbnail, and every folder that received one, is fsynced before the transaction that
    publishes them commits (SQLite runs at synchronous=FULL, so the commit itself is durable too)."""
    from core.store import datasets as store

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    real_commit = store.commit_import
    at_commit: list[int] = []

    def commit(*args, **kwargs):
        result = real_commit(*args, **kwargs)
        at_commit.append(len(synced))
        return result

    monkeypatch.setattr(store, "commit_import", commit)
    import_dataset("local", small_folder, "ds", workers=1)
    with engine().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    synced_before = set(synced[:at_commit[0]])
    staged = {os.path.basename(p).split(".tmp")[0].lstrip(".") for p in synced_before}  # staged under a temp name
    for _item, path, digest in stored_files():
        for stored in (path, store.thumb_file(digest)):
            assert stored.name in staged, f"{stored} was not fsynced when staged"
            assert str(stored.parent) in synced_before, f"{stored.parent} was not fsynced before the commit"


def test_an_import_killed_mid_commit_is_rolled_back_at_the_next_start(small_folder, tmp_path):
    """SIGKILL while the commit has moved its files in but not committed: SQLite rolls the rows back by itself; the
    next process's start-up check finds the abandoned staging area, removes the files no row refers to and the
    area. Before the fix the files stayed forever and the staging area for a day."""
    import signal

    from core import paths, startup

    import_dataset("local", caltech_slice(tmp_path / "first", ("accordion",), per_class=3), "first", workers=1)
    moved = tmp_path / "moved"
    code = (
        "import os, time\n"
        "from core.store import datasets as store\n"
        "real = store._move_tree\n"
        "calls = []\n"
        "def move(src, dest, moved):\n"
        "    real(src, dest, moved)\n"
        "    calls.append(dest)\n"
        "    if len(calls) == 2:\n"
        f"        open({str(moved)!r}, 'w').close()\n"
        "        time.sleep(600)\n"
        "store._move_tree = move\n"
        "from core.data.importer import import_dataset\n"
        f"import_dataset('local', {str(small_folder)!r}, 'killed', workers=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not moved.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(paths.subdir("staging").iterdir())) == 1  # the dead import's area
    startup.forget()  # a new process starts: its first use of the store runs the check
    report = startup.check_once(engine())
    assert report["interrupted_imports"]["areas"] == 1 and report["interrupted_imports"]["files"] >= 30
    assert service.dataset_names("local") == ["first"]
    assert list(paths.subdir("staging").iterdir()) == []
    assert assert_every_item_file_is_sound() == 3
    from core.store import integrity

    assert integrity.orphans()["files_without_row"] == 0


def test_a_real_full_disk_keeps_the_store_sound(tmp_path, monkeypatch):
    """The data directory on a 2.5 MB tmpfs: the kernel's own ENOSPC, wherever it strikes first (staging, SQLite's
    WAL). The second import fails with "Disk full"; the first dataset, and the store, are sound. Needs the right to
    mount (root, as in CI's container); skipped elsewhere."""
    from core import startup

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        monkeypatch.setenv("DEEPTRAIN_HOME", str(mount / "home"))
        import_dataset("local", caltech_slice(tmp_path / "a", ("accordion", "anchor"), per_class=20), "a", workers=1)
        more = caltech_slice(tmp_path / "b", ("barrel", "bass", "beaver"), per_class=40)
        with pytest.raises(UserError, match=r"^Disk full: could not write the import of b as dataset 'b'"):
            import_dataset("local", more, "b", workers=1)
        assert service.dataset_names("local") == ["a"]
        assert assert_every_item_file_is_sound() == 40
        assert temp_files_left() == []
        from core.store import integrity

        assert integrity.orphans()["files_without_row"] == 0 and integrity.quick_check() == []
    finally:
        from core.store.engine import _engines

        for url in [u for u in _engines if str(mount) in u]:
            _engines.pop(url).dispose()  # SQLite's files must close before the unmount
        startup.forget()
        subprocess.run(["umount", str(mount)], check=True)
