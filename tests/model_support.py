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
