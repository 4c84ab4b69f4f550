"""AppTest of the Datasets page's Quality tab: the ranked list, a row beside its neighbours, fixes that make
versions (single and bulk), checked rows leaving the list, and the run button queueing a quality job."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data import quality
from core.data import service as datasets
from core.data.importer import import_dataset
from tests.conftest import caltech_slice
from tests.test_quality import CLASSES, _flip

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "1_Datasets.py")


@pytest.fixture
def checked_dataset(tmp_path) -> dict[int, str]:
    """Dataset "q": 5 Caltech concepts x 6 photos, 3 labels flipped, checked once (in this process)."""
    import_dataset("local", caltech_slice(tmp_path / "src", CLASSES, 6), "q", workers=1)
    truth = _flip(datasets.dataset_records("local", "q"), 3)
    quality.find_issues_now("local", "q")
    return truth


def _table(at: AppTest):
    """The quality list's rows (a data frame), or None when the tab shows no list."""
    found = [d.value for d in at.dataframe if "issue" in d.value.columns]
    return found[0] if found else None


def _rows(at: AppTest) -> list[int]:
    table = _table(at)
    return [] if table is None else [int(i) for i in table["item"]]


def _version() -> int:
    return datasets.get_dataset("local", "q")["version"]


def test_quality_list_row_and_fixes_make_versions(checked_dataset):
    truth = checked_dataset
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    table = _table(at)
    assert table is not None and len(table) >= 1
    assert set(table.columns) >= {"item", "issue", "given", "suggested", "score"}
    labels = [r for r in quality.dataset_issues("local", "q")["issues"] if r["kind"] == "label"]
    flipped = [r["item"] for r in labels if r["item"] in truth]
    assert flipped, labels

    # open a flipped row: the image beside its neighbours; accept its suggestion
    at.selectbox(key="ds_q_open").set_value(flipped[0]).run()
    captions = [str(i.proto.imgs[0].caption) for i in at.get("image") if i.proto.imgs]
    assert any(c.startswith(f"#{flipped[0]} ") for c in captions) and len(captions) >= 1 + 5
    before = _version()
    at.button(key="ds_q_accept").click().run()
    assert not at.exception
    assert _version() == before + 1
    suggested = next(r["suggested"] for r in labels if r["item"] == flipped[0])
    assert datasets.get_item("local", flipped[0])["labels"] == [suggested]
    assert flipped[0] not in _rows(at)

    # bulk: mark two rows checked (no new version), then remove one more row's image (a new version)
    rows = _rows(at)
    assert len(rows) >= 3, rows  # the other flips, and whatever else the check found
    at.multiselect(key="ds_q_selected").set_value(rows[:2]).run()
    at.button(key="ds_q_bulk_check").click().run()
    assert not at.exception and _version() == before + 1
    assert set(quality.checked_items("local", "q")) == set(rows[:2])
    left = _rows(at)
    assert left and not set(left) & set(rows[:2])
    at.multiselect(key="ds_q_selected").set_value(left[:1]).run()
    at.button(key="ds_q_bulk_remove").click().run()
    assert not at.exception and _version() == before + 2
    assert left[0] not in {r["item_id"] for r in datasets.dataset_records("local", "q")}


def test_bulk_relabel_sets_one_label_in_one_version(checked_dataset):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    rows = _rows(at)[:2]
    before = _version()
    at.multiselect(key="ds_q_selected").set_value(rows).run()
    at.selectbox(key="ds_q_bulk_other").set_value("pizza").run()
    at.button(key="ds_q_bulk_relabel").click().run()
    assert not at.exception
    assert _version() == before + 1
    assert all(datasets.get_item("local", i)["labels"] == ["pizza"] for i in rows)


def test_find_issues_queues_a_quality_job(tmp_path, inline_jobs):
    from core import jobs
    from tests.jobs_support import cleanup

    import_dataset("local", caltech_slice(tmp_path / "src", CLASSES[:2], 3), "q", workers=1)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("No quality check" in i.value for i in at.info)
    try:
        at.button(key="ds_q_run").click().run()
        assert not at.exception
        listed = jobs.list_jobs("local")
        assert [(j["type"], j["what"]) for j in listed] == [("quality", "quality check of q with general model")]
        st = jobs.wait("local", listed[0]["id"], timeout=120)
        assert st["state"] == "succeeded", st
        at.run()
        assert not at.exception and at.metric  # the list's counts now show
    finally:
        cleanup()


def test_retrain_click_queues_the_last_configuration_on_the_new_version(checked_dataset):
    from core import jobs
    from core.store import jobs as job_store
    from tests.jobs_support import cleanup, train_config

    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not any(b.key == "ds_q_retrain" for b in at.button)  # nothing trained on it yet: no button
    old = job_store.insert_job("local", "train", {**train_config(epochs=1, dataset="q", name="q-clf"),
                                                  "owner": "local", "run": "7"})
    assert job_store.finish(old, "failed", error="stopped by the test", from_states=("queued",))
    try:
        at.run()
        at.button(key="ds_q_retrain").click().run()
        assert not at.exception
        version = _version()
        new = [j for j in jobs.list_jobs("local") if j["id"] != old]
        assert len(new) == 1 and new[0]["type"] == "train"
        config = jobs.status("local", new[0]["id"])["config"]
        assert config["dataset"] == "q" and config["template"] == train_config()["template"]
        assert config["params"]["image_size"] == 32 and config["name"] == f"q-clf-v{version}"
        assert any(f"queued on version {version}" in s.value for s in at.success)
    finally:
        cleanup()
