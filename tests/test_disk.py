"""Disk use: caches under one budget (least recently used evicted), removed with their dataset along with its index
folders; exports, abandoned uploads and temporary files cleaned; the start-up check in a real new process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core import disk, paths
from core.data import service
from core.data.importer import import_dataset
from core.store import datasets as store
from core.training import data as tdata
from tests.conftest import ROOT


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.fixture
def ds(small_folder) -> dict:
    import_dataset("local", small_folder, "photos", workers=1)
    return store.get_dataset("local", "photos")


def _cache(ds: dict, size: int) -> Path:
    return tdata.image_cache(ds, store.dataset_records(ds["id"]), size, "short_side_crop").folder


def test_caches_stay_within_their_budget_least_recently_used_first(ds, monkeypatch):
    small, medium = _cache(ds, 32), _cache(ds, 48)  # 18 images: 55 KB and 124 KB of pixels
    _age(small, 7200)
    _age(medium, 3600)
    assert _cache(ds, 32) == small  # used again: now the most recent
    monkeypatch.setenv("DEEPTRAIN_CACHE_MAX_BYTES", str(300_000))
    large = _cache(ds, 64)  # 221 KB more: over the budget, so the least recently used (medium) goes
    assert small.is_dir() and large.is_dir() and not medium.exists()
    assert sum(c["bytes"] for c in disk.caches()) <= 300_000
    monkeypatch.setenv("DEEPTRAIN_CACHE_MAX_BYTES", str(100_000))
    assert disk.enforce_cache_budget() == []  # both used within IN_USE_S: a job may be about to map them
    _age(small, 3600)
    assert disk.enforce_cache_budget() == [small.name] and large.is_dir()


def test_the_default_budget_is_a_share_of_the_free_disk(monkeypatch):
    monkeypatch.delenv("DEEPTRAIN_CACHE_MAX_BYTES", raising=False)
    free = disk.free_bytes()
    assert abs(disk.cache_budget(0) - 0.25 * free) < 0.01 * free
    monkeypatch.setenv("DEEPTRAIN_CACHE_MAX_FRACTION", "0.1")
    assert abs(disk.cache_budget(10**9) - 0.1 * (free + 10**9)) < 0.01 * free


def test_deleting_a_dataset_removes_its_caches_and_index_folders(ds, small_folder):
    from core.search import index as vindex
    from core.store import indexes

    import_dataset("local", small_folder, "other", workers=1)
    other = store.get_dataset("local", "other")
    mine, theirs = _cache(ds, 32), _cache(other, 32)
    feats = tdata.feature_cache_folder(ds["id"], ds["version"], "classifier", "t", "w", 32)
    tdata.load_or_build_features(feats, 18, lambda: {"orig": np.zeros((18, 4), np.float32)})
    folder = paths.subdir("indexes") / "ix-photos"
    vindex.build(np.arange(18), np.eye(18, 8, dtype=np.float32)).save(folder / "vectors.idx")
    indexes.create_index("local", "photos-general", ds["id"], ds["version"], "general", 8, 18, "flat", {},
                         str(folder), 0.1)
    assert feats.is_dir() and folder.is_dir()
    service.delete_dataset("local", "photos")
    assert not mine.exists() and not feats.exists() and not folder.exists()
    assert indexes.list_indexes() == [] and theirs.is_dir()


def test_exports_uploads_and_temporary_files_are_cleaned_after_a_day(ds):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    old_export, new_export = paths.subdir("exports") / "old.zip", paths.subdir("exports") / "new.zip"
    old_upload, new_upload = paths.subdir("uploads") / "tmpold.zip", paths.subdir("uploads") / "tmpnew.zip"
    model = paths.subdir("models") / "m1"
    model.mkdir()
    gone_writer = model / f".weights.safetensors.tmp-{dead_pid}-0a1b"
    live_writer = model / f".config.json.tmp-{os.getpid()}-2c3d"
    just_gone = model / f".metrics.csv.tmp-{dead_pid}-4e5f"  # under an hour old: left for now
    for f in (old_export, new_export, old_upload, new_upload, gone_writer, live_writer, just_gone):
        f.write_bytes(b"x")
    for f in (old_export, old_upload):
        _age(f, 2 * 86400)
    for f in (gone_writer, live_writer):
        _age(f, 2 * 3600)  # its writer's death is believed after an hour (another pid namespace looks dead too)
    report = disk.clean()
    assert report == {"temp_files": 1, "exports": 1, "uploads": 1, "caches": 0}
    assert not old_export.exists() and not old_upload.exists() and not gone_writer.exists()
    assert new_export.exists() and new_upload.exists() and live_writer.exists() and just_gone.exists()


def test_a_new_process_runs_the_start_up_check_once(ds, tmp_path):
    """An import killed before its commit leaves its staging area; the next process to open the store (here a job
    worker given a job that does not exist) removes it, and its report says what the check cost."""
    import json

    area = paths.subdir("staging") / "0123abcd"
    (area / "blobs" / "ab").mkdir(parents=True)
    (area / "blobs" / "ab" / "abab.jpg").write_bytes(b"staged")
    (area / ".lock").touch()  # nobody holds it: its process is gone
    (area / "commit.json").write_text(json.dumps(["ab" * 32]))
    live = paths.subdir("staging") / "4567cdef"  # an import running in another process
    live.mkdir()
    hold = ("import fcntl, sys, time\n"
            f"f = open({str(live / '.lock')!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        code = ("import json, time\nt = time.perf_counter()\nfrom core.store.engine import engine\n"
                "from core import startup\neng = engine()\n"
                "print(json.dumps(startup.last_report(eng)))\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=True)
        report = json.loads(out.stdout)
        assert report["quick_check"] == "ok" and report["interrupted_imports"] == {"areas": 1, "files": 0}
        assert report["ms"] < 2000, report
        assert not area.exists() and live.is_dir()
        worker = subprocess.run([sys.executable, "-m", "core", "worker", "999"], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)
        assert "No job with id 999" in worker.stderr and live.is_dir()
    finally:
        holder.kill()
        holder.wait()
    from core import startup
    from core.store.engine import engine

    startup.forget()  # its lock died with its process: the next process's check removes that area too
    assert startup.check_once(engine())["interrupted_imports"]["areas"] == 1 and not live.exists()
