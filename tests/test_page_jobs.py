"""AppTest of the Jobs page with real jobs: a running and a finished one are shown, and every button acts."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.store import jobs as store
from core.templates import get_template
from tests.conftest import shown
from tests.jobs_support import in_epoch, tiny, train_config, wait_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
PAGES = Path(__file__).resolve().parent.parent / "pages"


def _jobs_page() -> AppTest:
    at = AppTest.from_file(str(PAGES / "3_Jobs.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def test_empty_jobs_page_points_to_train():
    at = _jobs_page()
    assert any("No jobs yet" in i.value for i in at.info)


def test_jobs_page_shows_running_and_finished_jobs_and_its_buttons_act(tiny):
    done = jobs.submit("local", "train", train_config(
        epochs=2, items=40, options={"early_stopping_patience": 5, "compile": False}))
    assert jobs.wait("local", done, timeout=180)["state"] == "succeeded"
    running = jobs.submit("local", "train", train_config(epochs=3, items=4000))
    wait_store(running, in_epoch(1, 60), timeout=180)  # 60 of 3,000 steps: the bar shows 2%

    at = _jobs_page()
    table = at.dataframe[0].value
    assert list(table["id"]) == [running, done] and list(table["state"]) == ["running", "succeeded"]
    assert at.selectbox(key="jobs_selected").value == running  # newest first
    bar = at.get("progress")[0]
    assert "Running" in bar.proto.text and "epoch 1/3" in bar.proto.text and "images/s" in bar.proto.text
    assert 0 < bar.value < 100
    assert any(c.value.startswith("Device: CPU") and "(fp32" in c.value for c in at.caption)  # the numerics in use
    assert any("niceness 10" in c.value and "worker_threads" in c.value for c in at.caption)  # how workers yield
    assert not at.button(key="jobs_cancel").disabled and at.button(key="jobs_resume").disabled

    at.button(key="jobs_cancel").click().run()  # asks the worker to stop between steps
    assert not at.exception, at.exception
    assert store.get_job(running)["state"] == "cancelled"
    assert any("checkpoint" in w.value for w in at.warning)
    assert not at.button(key="jobs_resume").disabled
    at.button(key="jobs_resume").click().run()
    assert not at.exception, at.exception
    job = store.get_job(running)
    assert job["state"] in ("queued", "starting", "running") and job["resume"]

    at.selectbox(key="jobs_selected").set_value(done).run()
    assert not at.exception, at.exception
    assert any("Finished" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) >= 2  # loss and learning rate (and accuracy per epoch)
    assert "succeeded" in at.code[-1].value  # the log's tail
    at.number_input(key="jobs_extend_epochs").set_value(1).run()
    at.button(key="jobs_extend").click().run()
    assert not at.exception, at.exception
    extended = max(j["id"] for j in store.list_jobs())
    ext = store.get_job(extended)
    assert ext["parent_id"] == done and ext["config"]["params"]["num_epochs"] == 3 and ext["resume"]
    assert at.selectbox(key="jobs_selected").value == extended

    at.selectbox(key="jobs_selected").set_value(done).run()
    at.button(key="jobs_clone").click().run()  # fills the Train page's widgets with this configuration
    assert not at.exception, at.exception
    cfg = store.get_job(done)["config"]
    train = AppTest.from_file(str(PAGES / "2_Train.py"), default_timeout=60)
    keys = ["train_kind_select", "train_template_select", "train_dataset", "train_patience", "train_compile"]
    keys += ["train_p_" + spec.name for spec in get_template(cfg["kind"], cfg["template"]).params]
    for key in keys:  # the widget state Clone left for the Train page (a new page run in the same session)
        if key in at.session_state:
            train.session_state[key] = at.session_state[key]
    train.run()
    assert not train.exception, train.exception
    assert train.selectbox(key="train_template_select").value == cfg["template"]
    assert train.slider(key="train_p_image_size").value == cfg["params"]["image_size"] == 32
    assert train.number_input(key="train_p_num_items_per_epoch").value == 40
    assert train.selectbox(key="train_dataset").value == "tiny"
    assert train.number_input(key="train_patience").value == 5  # the training options come along
    assert train.radio(key="train_compile").value is False


def test_failed_job_shows_the_reason_first_and_the_traceback_folded(tiny):
    bad = train_config(epochs=1, items=40)
    bad["params"]["batch_size"] = 0
    job_id = store.insert_job("local", "train", bad)
    jobs.pump()
    wait_store(job_id, lambda j: j["state"] in store.TERMINAL, timeout=120)
    at = _jobs_page()
    assert "batch_size" in shown(at.error[0].value)
    assert at.expander[0].label == "Traceback"


def test_train_page_start_training_queues_a_job_with_the_page_configuration(tiny):
    at = AppTest.from_file(str(PAGES / "2_Train.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.selectbox(key="train_template_select").set_value("Studio_EfficientNetLite0_Transfer").run()
    at.slider(key="train_p_image_size").set_value(32).run()
    assert at.selectbox(key="train_dataset").value == "tiny"
    at.text_input(key="train_model_name").set_value("from-the-page")
    at.number_input(key="train_patience").set_value(3)
    at.radio(key="train_compile").set_value(True)
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    [job] = store.list_jobs()
    assert job["owner"] == "local" and job["type"] == "train"
    cfg = job["config"]
    assert (cfg["kind"], cfg["template"], cfg["dataset"], cfg["name"]) == (
        "classifier", "Studio_EfficientNetLite0_Transfer", "tiny", "from-the-page")
    assert cfg["params"] == at.session_state["train_params"] and cfg["params"]["image_size"] == 32
    assert cfg["options"] == {"early_stopping_patience": 3, "compile": True}
    assert any(f"Job {job['id']} is queued" in s.value for s in at.success)
    assert at.session_state["jobs_select_next"] == job["id"]  # the Jobs page opens on it
