"""AppTest of the Visual Search page: build in-process, query by dataset image, concept and upload, facts,
near-duplicates, sync after a deletion, and a background build job."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data.importer import import_dataset
from core.search import service
from core.store import datasets as ds_store
from tests.conftest import shown

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "5_Visual_Search.py")


def _texts(at) -> str:
    return shown("\n".join([m.value for m in at.markdown] + [c.value for c in at.caption]
                            + [s.value for s in at.success]
                     + [i.value for i in at.info] + [w.value for w in at.warning] + [e.value for e in at.error]))


def _result_items(at) -> list[int]:
    """Item ids of the result grid, in order (each result's caption ends with "item N")."""
    return [int(m.value.rsplit("item ", 1)[1]) for m in at.markdown if re.match(r"\*\*[01]\.\d+\*\*", m.value)]


def test_empty_page_renders():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert "No dataset yet" in _texts(at) and "No index yet" in _texts(at)


def test_build_query_and_duplicates(small_folder):
    import_dataset("local", small_folder, "cal", workers=1)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    at.checkbox(key="vs_build_background").uncheck()
    at.button(key="vs_build").click().run()
    assert not at.exception, at.exception
    assert "Index 'cal-general' built: 18 images." in _texts(at)
    assert at.selectbox(key="vs_index").value == "cal-general"
    # the picker says which embedder each index searches with
    assert at.selectbox(key="vs_index").options == ["cal-general · embedder: general (EfficientNet-Lite0, ImageNet)"]
    assert [m.label for m in at.metric][:2] == ["Images", "Dimension"]
    assert at.metric[0].value == "18" and at.metric[1].value == "1280"
    assert at.metric[2].label == "Index (exact)" and at.metric[2].value == "flat"  # short enough not to be cut off
    assert "Model: general (EfficientNet-Lite0, ImageNet)" in _texts(at)

    recs = ds_store.dataset_records(ds_store.get_dataset("local", "cal")["id"])
    ant = next(r for r in recs if r["labels"] == ["ant"])
    at.radio(key="vs_mode").set_value("Dataset image").run()
    at.number_input(key="vs_item").set_value(ant["item_id"]).run()
    at.slider(key="vs_k").set_value(4).run()
    assert not at.exception
    texts = _texts(at)
    assert "Nearest concepts:** ant" in texts
    shown = _result_items(at)
    assert len(shown) == 4 and ant["item_id"] not in shown and set(shown) <= {r["item_id"] for r in recs}

    at.radio(key="vs_mode").set_value("Concept").run()
    at.selectbox(key="vs_concept").set_value("anchor").run()
    at.selectbox(key="vs_filter").set_value("anchor").run()
    assert not at.exception
    anchors = {r["item_id"] for r in recs if r["labels"] == ["anchor"]}
    assert len(_result_items(at)) == 4 and set(_result_items(at)) <= anchors

    # "Find similar" on a result switches to that dataset image
    first = next(b for b in at.button if b.key and b.key.startswith("vs_similar_"))
    first.click().run()
    assert at.radio(key="vs_mode").value == "Dataset image"
    assert at.number_input(key="vs_item").value == int(first.key.rsplit("_", 1)[1])

    # another page hands over one image ("find similar" on the Datasets page)
    at.session_state["vs_next_item"] = ant["item_id"]
    at.run()
    assert at.radio(key="vs_mode").value == "Dataset image" and at.number_input(key="vs_item").value == ant["item_id"]
    assert ant["item_id"] not in _result_items(at) and len(_result_items(at)) == 4

    at.slider(key="vs_dup_threshold").set_value(0.8).run()
    at.button(key="vs_dup_find").click().run()
    assert not at.exception
    assert "pair(s) at or above 0.80" in _texts(at)

    # deleting images makes the index stale; the page syncs it
    ds_store.delete_items(ds_store.get_dataset("local", "cal")["id"], [ant["item_id"]])
    at.run()
    assert "The dataset changed since this index was built" in _texts(at)
    at.button(key="vs_sync").click().run()
    assert "Synced: 0 added, 1 removed; 17 images." in _texts(at)
    assert service.index_facts("local", "cal-general")["count"] == 17


@pytest.mark.slow
def test_background_build_is_a_job(small_folder, monkeypatch, inline_jobs):
    from core import jobs
    from tests.jobs_support import cleanup

    monkeypatch.setenv("DEEPTRAIN_HEARTBEAT_S", "0.3")
    import_dataset("local", small_folder, "cal", workers=1)
    try:
        at = AppTest.from_file(PAGE, default_timeout=60).run()
        at.text_input(key="vs_build_name").set_value("bg")
        at.button(key="vs_build").click().run()
        assert not at.exception
        assert "queued: index of cal with general model" in _texts(at)
        job = jobs.list_jobs("local")[0]
        assert jobs.wait("local", job["id"], timeout=240)["state"] == "succeeded"
    finally:
        cleanup()
    at.run()
    assert at.selectbox(key="vs_index").value == "bg"
