"""AppTest of the Models page for a classifier and an embedder trained in the test on real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.model_support import make_trained_home

PAGE = str(ROOT / "pages" / "4_Models.py")


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    return make_trained_home(tmp_path_factory, "pagehome")


@pytest.fixture
def home(trained_home, monkeypatch) -> Path:
    monkeypatch.setenv("DEEPTRAIN_HOME", str(trained_home))
    return trained_home


def _open(name: str) -> AppTest:
    from core.store.models import get_model

    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception, at.exception
    at.selectbox(key="models_selected").set_value(get_model("local", name)["id"]).run()
    at.button(key="models_eval_btn").click().run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _table(at: AppTest, concepts: list[str]):
    """The per-concept table (the dataframe with a "concept" column)."""
    for df in at.dataframe:
        if "concept" in df.value.columns:
            return df.value
    raise AssertionError("no per-concept table")


def test_empty_page_points_to_train():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("No trained model yet" in i.value for i in at.info)


def test_classifier_view_threshold_and_confusion(home):
    from core.evaluation import service

    at = _open("classifier")
    assert any(c.value.startswith("Trained in the foreground: ") for c in at.caption)  # no job: its epochs' time
    result = service.evaluate("local", "classifier")
    assert float(_metric(at, "Accuracy (top-1)")) == pytest.approx(result["accuracy"], abs=1e-3)
    concepts = result["concepts"]
    before = _table(at, concepts)
    assert list(before["concept"]) == concepts
    at.slider(key="models_threshold").set_value(0.0).run()
    assert not at.exception
    after = _table(at, concepts)
    assert list(after["predicted"]) == [result["items"]] * len(concepts)  # at 0 every concept is predicted
    assert list(after["predicted"]) != list(before["predicted"])
    # pick a confusion cell from the select boxes: the caption counts that cell
    true, pred = concepts[0], concepts[0]
    at.selectbox(key="models_cm_true").set_value(true).run()
    at.selectbox(key="models_cm_pred").set_value(pred).run()
    n = result["confusion"]["counts"][0][0]
    assert any(f"{n} image(s) labelled {true!r}" in c.value for c in at.caption)
    assert not at.exception


def test_classifier_predict_from_dataset_and_export(home):
    at = _open("classifier")
    at.radio(key="models_predict_source").set_value("Dataset").run()
    at.button(key="models_predict_btn").click().run()
    assert not at.exception, at.exception
    _model_id, predicted, results = at.session_state["models_predictions"]  # with the images they were made on
    assert results and results[0]["concepts"] and [r["image"] for r in results] == list(predicted)
    at.button(key="models_export_btn").click().run()
    assert not at.exception, at.exception
    assert at.session_state["models_export"][2]["path"].endswith(".zip")


def test_embedder_view(home):
    from core.evaluation import service

    at = _open("embedder")
    result = service.evaluate("local", "embedder")
    assert float(_metric(at, "recall@1")) == pytest.approx(result["recall_at_1"], abs=1e-3)
    assert _metric(at, "mAP@R") == f"{result['map_at_r']:.3f}"
    assert not at.exception


def test_compare_refuses_mixed_kinds(home):
    from core.store.models import get_model

    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.multiselect(key="models_compare").set_value([get_model("local", n)["id"] for n in ("classifier", "embedder")])
    at.run()
    assert not at.exception
    assert any("one kind" in e.value for e in at.error)


def test_fix_labels_from_misclassified_gallery(home):
    """Last: relabels one item, which makes a new dataset version."""
    from core.evaluation import service
    from core.store import datasets as ds

    at = _open("classifier")
    row = service.get("local", "classifier")
    result = service.evaluate("local", "classifier")
    assert result["misclassified"], "the 1-epoch model from random weights gets some held-out images wrong"
    miss = result["misclassified"][0]
    new = [c for c in result["concepts"] if c not in miss["labels"]][:1]
    version = ds.get_dataset_by_id(row["dataset_id"])["version"]
    at.multiselect(key=f"models_fix_{miss['item_id']}").set_value(new).run()
    at.button(key=f"models_fix_save_{miss['item_id']}").click().run()
    assert not at.exception, at.exception
    assert ds.get_item(miss["item_id"])["labels"] == new
    assert ds.get_dataset_by_id(row["dataset_id"])["version"] == version + 1
    assert any(f"version {version + 1}" in s.value for s in at.success)
    assert service.cached(row) is None  # the evaluation is stale for the new version
