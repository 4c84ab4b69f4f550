"""The head tunes itself on its cached features (``tune_head``): a rate from the grid, every candidate logged, within
the template's bounds, and a run without tuning untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.templates import get_template
from core.training import Callbacks, train
from core.training.tuning import LRATE_GRID, MIN_VAL_ITEMS, validation_fold
from tests.training_support import manifest_dataset

LITE0 = ("classifier", "Studio_EfficientNetLite0_Transfer")


class Log(Callbacks):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.phases: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def on_step(self, p: dict) -> None:
        self.phases.append(str(p.get("phase")))


@pytest.fixture
def slice_(tmp_path) -> dict:
    """Two concepts x 30 training + 5 validation real photos (enough for a 12-image held-out fold)."""
    return manifest_dataset(tmp_path, name="slice", n_train=30, n_val=5)


def _params(**over) -> dict:
    # small images and few epochs: the features of 70 photos and 4 x 6 head epochs take seconds
    return {"image_size": 64, "batch_size": 16, "num_epochs": 6, "base_gradient_multiplier": 0.0, **over}


def _train(run: Path, **params) -> tuple[dict, dict, Log]:
    log = Log()
    result = train({"dataset": "slice", "kind": LITE0[0], "template": LITE0[1], "params": _params(**params),
                    "seed": 3}, run, log)
    assert result.model_path is not None
    config = json.loads((Path(result.model_path) / "config.json").read_text())
    weights = load_file(str(Path(result.model_path) / "weights.safetensors"))
    return {"metrics": result.metrics, "config": config, "id": result.model_id}, weights, log


def test_validation_fold_holds_out_a_share_of_every_label():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, held = validation_fold(labels, seed=0)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(labels)))
    assert [int((labels[held] == c).sum()) for c in range(4)] == [2, 1, 0, 1]  # a single item stays in fit
    assert np.array_equal(held, validation_fold(labels, seed=0)[1])  # a pure function of its seed
    assert not np.array_equal(held, validation_fold(labels, seed=1)[1])


def test_the_tuner_picks_a_rate_from_its_grid_and_logs_every_candidate(slice_, tmp_path):
    out, _, log = _train(tmp_path / "run", tune_head=True)
    tuned = out["config"]["head_tuning"]
    spec = get_template(*LITE0).param("lrate")
    assert tuned["grid"] == [v for v in LRATE_GRID if spec.min is None or v >= spec.min]
    assert tuned["chosen"] in tuned["grid"]
    assert out["metrics"]["tuned_lrate"] == tuned["chosen"]
    assert tuned["val_items"] >= MIN_VAL_ITEMS and tuned["fit_items"] + tuned["val_items"] == 60
    losses = {c["lrate"]: c["val_loss"] for c in tuned["candidates"]}
    assert list(losses) == tuned["grid"] and tuned["chosen"] == min(losses, key=losses.__getitem__)
    for rate in tuned["grid"]:
        assert any(line.startswith(f"head tuning: lrate {rate:g}: held-out loss") for line in log.lines), rate
    assert any(line.startswith("head tuned: lrate ") for line in log.lines)
    assert "tuning" in log.phases  # the job's progress shows the phase

    # the Models page says what the head chose, and shows every candidate
    from streamlit.testing.v1 import AppTest

    from core.evaluation import service
    from tests.conftest import ROOT

    text = service.head_tuning("local", out["id"])["text"]
    assert text.startswith(f"Head tuned: lrate {tuned['chosen']:g} of {{0.003, 0.01, 0.03, 0.1}}")
    at = AppTest.from_file(str(ROOT / "pages" / "4_Models.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert [e.label for e in at.expander if e.label.startswith("Head tuned")] == [text]
    shown = at.dataframe(key="models_tuning").value
    assert shown["lrate"].tolist() == tuned["grid"] and shown["chosen"].sum() == 1


def test_a_tuned_run_trains_as_if_its_rate_had_been_set_by_hand(slice_, tmp_path):
    """The candidates leave no trace: the same initial head, the same batches and random draws."""
    tuned, w_tuned, _ = _train(tmp_path / "a", tune_head=True)
    chosen = tuned["config"]["head_tuning"]["chosen"]
    by_hand, w_hand, log = _train(tmp_path / "b", tune_head=False, lrate=chosen)
    assert by_hand["config"]["head_tuning"] is None and "tuned_lrate" not in by_hand["metrics"]
    assert not any("tuning" in line for line in log.lines)
    for k in w_hand:
        assert torch.equal(w_hand[k], w_tuned[k]), k


def test_tuning_does_not_apply_while_the_backbone_trains(tmp_path):
    manifest_dataset(tmp_path, name="slice")  # 2 x (2 + 1) photos: the whole network trains one short epoch
    out, _, log = _train(tmp_path / "run", tune_head=True, base_gradient_multiplier=0.1, num_epochs=1, image_size=32)
    assert out["config"]["head_tuning"] is None
    assert any("head tuning skipped: the backbone trains too" in line for line in log.lines)
