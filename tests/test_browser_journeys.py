"""Browser journeys: what a user does in a real chromium against the running app, from data to a model and a search.

Each journey drives the widgets the way a person does (clicks, typing, keyboard on sliders), waits for text that only
appears when the server finished its work, and checks every page it visits shows no traceback. Kept small (18
Caltech-101 photos, 32 px, 2 epochs) so the file runs in a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.browser import browser_page, saved_on_failure, shot, streamlit_server, wait_idle
from tests.conftest import caltech_slice

pytestmark = pytest.mark.browser

TRAIN_TIMEOUT_MS = 240_000  # a 2-epoch job: worker start, feature caching and evaluation on a loaded 2-core CPU


def open_page(page, name: str, ready_text: str) -> None:
    """Go to another page through the sidebar (the same browser session) and wait until its script run finished."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name, exact=True).click()
    page.get_by_text(ready_text, exact=True).first.wait_for()
    wait_idle(page)
    assert_clean(page)


def start_at(page, url: str, name: str, ready_text: str) -> None:
    """Open the app's home page, wait until it has drawn, then go to page ``name`` through the sidebar."""
    page.goto(url)
    page.get_by_text("At a glance").wait_for()
    wait_idle(page)
    open_page(page, name, ready_text)


def assert_clean(page) -> None:
    """No traceback and no Streamlit exception box anywhere on the page."""
    assert "Traceback" not in page.inner_text("body")
    assert page.get_by_test_id("stException").count() == 0


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label``.

    The list closes when the page scrolls, as it does when a click first brings the box into view: scroll, let it
    settle, then click (and open it from the keyboard if the click still landed during a scroll).
    """
    box = page.get_by_role("combobox", name=label, exact=True)
    box.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    box.click()
    item = page.get_by_role("option", name=option, exact=True)
    try:
        item.wait_for(timeout=2_000)
    except PlaywrightTimeout:
        box.press("ArrowDown")
    item.click()
    wait_idle(page)


def type_into(page, label: str, text: str) -> None:
    """Type into the text input labelled ``label`` and commit it with Enter."""
    box = page.get_by_role("textbox", name=label, exact=True)
    box.fill(text)
    box.press("Enter")
    wait_idle(page)


def slide(page, param: str, keys: list[str], expected: int) -> None:
    """Move the slider of hyperparameter ``param`` with the keyboard; wait until the configuration shows ``expected``.

    A slider sends its value a moment after the last key, so the page's configuration is what says it arrived.
    """
    slider = page.get_by_role("slider", name=f"`{param}`")
    slider.focus()
    for key in keys:
        slider.press(key)
    expect(slider).to_have_value(str(expected))
    expect(page.get_by_test_id("stJson")).to_contain_text(re.compile(rf'"{param}":\s*{expected}\b'))
    wait_idle(page)


def import_from_server(page, name: str, path: str) -> None:
    page.get_by_text("Path on the server", exact=True).click()
    wait_idle(page)
    type_into(page, "Dataset name", name)
    type_into(page, "Folder or file on the server", path)
    page.get_by_role("button", name="Import", exact=True).click()



def evaluate_model(page, shown) -> None:
    """Open the evaluation on the Models page: press Evaluate once the tab has drawn it (a press while the page is
    still drawing is lost), unless the evaluation is already there; wait until ``shown`` appears."""
    evaluate = page.get_by_role("button", name="Evaluate", exact=True)
    evaluate.or_(shown).first.wait_for(timeout=60_000)
    wait_idle(page)
    if evaluate.count():
        evaluate.click()
    shown.wait_for(timeout=120_000)

def test_data_to_model(tmp_path, deeptrain_home):
    """Import a server folder, read its health report, train a small classifier, follow the job, open the model."""
    src = caltech_slice(tmp_path / "caltech3")
    roots = {"DEEPTRAIN_IMPORT_ROOTS": str(tmp_path)}  # the pages import server folders only under import roots
    with (streamlit_server(deeptrain_home, roots) as url, browser_page(tmp_path) as page,
          saved_on_failure(page, tmp_path, deeptrain_home)):
        start_at(page, url, "Datasets", "Dataset name")

        import_from_server(page, "caltech3", str(src))
        page.get_by_text(re.compile(r"Imported 18 images into 'caltech3'")).wait_for()
        wait_idle(page)
        assert_clean(page)
        chart = page.get_by_test_id("stPlotlyChart").first
        expect(chart).to_contain_text("Images per concept")
        for concept in ("accordion", "anchor", "ant"):  # the chart's x axis: one bar group per concept
            expect(chart).to_contain_text(concept)
        shot(page, tmp_path, "datasets")

        open_page(page, "Train", "Hyperparameters")
        page.get_by_text("Visual Classifier", exact=True).click()
        choose(page, "Template", "Studio_EfficientNetLite0_Transfer")
        page.get_by_text("EfficientNet-Lite0 ImageNet-1k weights", exact=False).first.wait_for()
        slide(page, "image_size", ["Home"], 32)
        slide(page, "num_epochs", ["Home", "ArrowRight"], 2)
        slide(page, "batch_size", ["Home"] + ["ArrowRight"] * 7, 8)
        choose(page, "Dataset", "caltech3")
        type_into(page, "Model name (optional)", "journey-model")
        page.get_by_role("button", name="Start training").click()
        page.get_by_text(re.compile(r"Job \d+ is queued")).wait_for()
        wait_idle(page)
        assert_clean(page)

        open_page(page, "Jobs", "Show the team's jobs too")
        job_title = re.compile(r"Job \d+: classifier Studio_EfficientNetLite0_Transfer on caltech3")
        page.get_by_text(job_title).wait_for()
        # A reload (or a closed tab) changes nothing: the page reads the job from the store again.
        page.reload()
        page.get_by_text("Show the team's jobs too").wait_for()
        page.get_by_text(job_title).wait_for()
        wait_idle(page)
        assert_clean(page)
        # The job's panel is a fragment polling every 2 s: the result appears without reloading the page.
        page.get_by_text(re.compile(r"Finished .*Model \d+ is on the Models page")).wait_for(timeout=TRAIN_TIMEOUT_MS)
        wait_idle(page)
        assert_clean(page)
        body = page.inner_text("body")
        assert "Succeeded · epoch 1/1" in body  # the head is fitted (tune_head): one epoch
        # The job picker names the job without a state that could go stale once it finished.
        expect(page.get_by_role("combobox", name="Job", exact=True)).to_have_value(
            re.compile(r"^#\d+ · classifier Studio_EfficientNetLite0_Transfer on caltech3 -> journey-model$"))
        expect(page.get_by_test_id("stPlotlyChart").first).to_contain_text("epoch")  # the curves, after the reload
        shot(page, tmp_path, "jobs")

        open_page(page, "Models", "Open model")
        expect(page.get_by_role("combobox", name="Open model", exact=True)).to_have_value(
            re.compile(r"journey-model · Visual Classifier · Studio_EfficientNetLite0_Transfer · caltech3"))
        evaluate_model(page, page.get_by_text("Accuracy (top-1)"))
        page.get_by_text("Confusion matrix", exact=True).wait_for()
        wait_idle(page)
        assert_clean(page)
        accuracy = page.get_by_test_id("stMetric").filter(has_text="Accuracy (top-1)").inner_text()
        assert re.search(r"\b[01]\.\d{3}\b", accuracy), accuracy
        assert page.get_by_test_id("stPlotlyChart").count() >= 2  # per-concept F1 and the confusion matrix
        page.get_by_text("Confusion matrix", exact=True).scroll_into_view_if_needed()
        shot(page, tmp_path, "models")

        # Predict on a photo uploaded from the person's computer.
        photo = sorted((src / "anchor").iterdir())[0]
        page.get_by_role("tab", name="Predict").click()
        wait_idle(page)
        page.get_by_test_id("stFileUploader").filter(has_text="Images").locator("input[type=file]").set_input_files(
            str(photo))
        page.get_by_test_id("stFileChipName").filter(has_text=photo.name).wait_for()
        predict = page.get_by_role("button", name="Predict", exact=True)
        expect(predict).to_be_enabled()
        predict.click()
        page.get_by_test_id("stImageCaption").filter(has_text=photo.name).wait_for()
        wait_idle(page)
        assert_clean(page)
        chart = page.get_by_test_id("stPlotlyChart").last
        for concept in ("accordion", "anchor", "ant"):  # the probabilities of every concept, as a bar chart
            expect(chart).to_contain_text(concept)
        shot(page, tmp_path, "predict")


def test_visual_search_by_dataset_image(tmp_path, deeptrain_home):
    """Build an index with the general embedder, query with a dataset image, read the result cards' scores."""
    from core.data.importer import import_dataset

    import_dataset("local", caltech_slice(tmp_path / "caltech3"), "caltech3", workers=1)
    with (streamlit_server(deeptrain_home) as url, browser_page(tmp_path) as page,
          saved_on_failure(page, tmp_path, deeptrain_home)):
        start_at(page, url, "Visual Search", "Build an index")
        expect(page.get_by_role("combobox", name="Dataset", exact=True)).to_have_value("caltech3")
        expect(page.get_by_role("combobox", name="Embedding model", exact=True)).to_have_value(
            re.compile("General embedder"))
        page.get_by_text("Run as a background job", exact=False).click()  # build here, with a progress bar
        wait_idle(page)
        page.get_by_role("button", name="Build index").click()
        page.get_by_text(re.compile(r"Index '.+' built: 18 images")).wait_for(timeout=180_000)
        wait_idle(page)
        assert_clean(page)

        page.get_by_text("Dataset image", exact=True).click()
        page.get_by_text("Nearest concepts:").wait_for(timeout=120_000)
        expect(page.get_by_role("button", name="Find similar")).to_have_count(10)  # k defaults to 10 result cards
        wait_idle(page)
        assert_clean(page)
        body = page.inner_text("body")
        query_item, query_concept = re.search(r"^item (\d+): (\w+)$", body, flags=re.M).groups()
        cards = re.findall(r"^(-?\d\.\d{3}) · (\w+)\nitem (\d+)$", body, flags=re.M)
        assert len(cards) == 10, body  # each card shows its similarity, concept and item
        scores = [float(score) for score, _, _ in cards]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
        assert query_item not in [item for _, _, item in cards]  # the query image itself is left out
        assert cards[0][1] == query_concept  # an accordion's nearest neighbour is another accordion
        assert f"Nearest concepts: {query_concept} (" in body
        page.get_by_role("button", name="Find similar").last.scroll_into_view_if_needed()  # the result cards
        shot(page, tmp_path, "search")


def test_bad_input_gets_a_clear_message(tmp_path, deeptrain_home):
    """A missing server path and an out-of-range hyperparameter each get a message, never a traceback."""
    missing = tmp_path / "no" / "such-folder"
    with (streamlit_server(deeptrain_home) as url, browser_page(tmp_path) as page,
          saved_on_failure(page, tmp_path, deeptrain_home)):
        start_at(page, url, "Datasets", "Dataset name")
        import_from_server(page, "broken", str(missing))
        error = page.get_by_test_id("stAlertContentError").filter(has_text="Import refused")
        error.wait_for()
        wait_idle(page)
        assert str(missing) in error.inner_text()
        assert_clean(page)
        page.screenshot(path=str(tmp_path / "bad_path.png"))  # not in the README

        open_page(page, "Train", "Hyperparameters")
        choose(page, "Template", "Studio_EfficientNetLite0_Transfer")
        box = page.get_by_role("spinbutton", name="`base_gradient_multiplier`")
        box.fill("5")
        box.press("Enter")
        wait_idle(page)
        page.get_by_text(re.compile("outside the allowed range")).wait_for()
        assert_clean(page)
        config = page.get_by_test_id("stJson").inner_text().replace(" ", "")
        assert '"base_gradient_multiplier":0' in config  # the refused value never reached the configuration
        shot(page, tmp_path, "train")


def upload(page, path) -> None:
    """Choose ``path`` in the Datasets page's uploader and wait until it has arrived (the Import button enables)."""
    page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files(str(path))
    page.get_by_test_id("stFileChipName").filter(has_text=path.name).wait_for()
    expect(page.get_by_role("button", name="Import", exact=True)).to_be_enabled(timeout=60_000)


def test_upload_a_zip_then_a_bad_one(tmp_path, deeptrain_home):
    """Upload a zip through the file uploader and import it; then a file that only claims to be a zip gets the
    importer's message naming it, not a traceback, and nothing is stored."""
    import shutil

    good = Path(shutil.make_archive(str(tmp_path / "photos"), "zip", caltech_slice(tmp_path / "caltech3")))
    bad = tmp_path / "holiday.zip"
    bad.write_bytes(b"these bytes are not a zip archive" * 100)
    with (streamlit_server(deeptrain_home) as url, browser_page(tmp_path) as page,
          saved_on_failure(page, tmp_path, deeptrain_home)):
        start_at(page, url, "Datasets", "Dataset name")
        type_into(page, "Dataset name", "uploaded")
        upload(page, good)
        page.get_by_role("button", name="Import", exact=True).click()
        page.get_by_text(re.compile(r"Imported 18 images into 'uploaded'")).wait_for(timeout=120_000)
        wait_idle(page)
        assert_clean(page)

        type_into(page, "Dataset name", "holiday")
        expect(page.get_by_test_id("stFileChipName")).to_have_count(0)  # the next run's uploader is a new, empty one
        upload(page, bad)
        page.get_by_role("button", name="Import", exact=True).click()
        error = page.get_by_test_id("stAlertContentError").filter(has_text="holiday.zip")
        error.wait_for(timeout=60_000)
        wait_idle(page)
        assert_clean(page)
        shot(page, tmp_path, "bad_upload")
    from core.data import service

    assert [d["name"] for d in service.list_datasets("local")] == ["uploaded"]  # the bad upload stored nothing


def test_watch_the_curves_advance_then_cancel_the_job(tmp_path, deeptrain_home):
    """A second, longer job: its curves gain points while the person watches the Jobs page (a fragment redraws
    them), then Cancel stops it and the page says so, keeping its checkpoint for Resume."""
    from core import jobs
    from core.data.importer import import_dataset
    from tests.jobs_support import train_config

    import_dataset("local", caltech_slice(tmp_path / "caltech3"), "caltech3", workers=1)
    config = train_config(epochs=200, items=1000, dataset="caltech3")  # about 2 s an epoch here: minutes in all
    config["params"]["image_size"] = 96
    job_id = jobs.submit("local", "train", config)
    refresh = {"DEEPTRAIN_CURVES_REFRESH_S": "2"}  # the curves redraw every 2 s instead of 10: the watch is short
    with (streamlit_server(deeptrain_home, refresh) as url, browser_page(tmp_path) as page,
          saved_on_failure(page, tmp_path, deeptrain_home)):
        start_at(page, url, "Jobs", "Show the team's jobs too")
        page.get_by_text(f"Job {job_id}: classifier").wait_for()
        loss = page.get_by_test_id("stPlotlyChart").filter(has_text="Loss")
        points = loss.locator("path.point")  # the per-epoch markers

        def drawn() -> int:
            return points.count()

        loss.wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=stPlotlyChart] path.point').length > 0",
                               timeout=120_000)
        before = drawn()
        for _ in range(40):  # the curves redraw every curves_refresh_s while the job runs
            page.wait_for_timeout(1000)
            if drawn() > before:
                break
        assert drawn() > before, f"the curves did not advance ({before} points)"
        assert_clean(page)

        page.get_by_role("button", name="Cancel", exact=True).click()
        page.get_by_text(re.compile(r"Cancel")).first.wait_for()
        expect(page.get_by_role("button", name="Resume", exact=True)).to_be_enabled(timeout=60_000)
        assert_clean(page)
    assert jobs.status("local", job_id)["state"] == "cancelled"


def test_detector_from_scenes_to_boxes_on_a_photo(tmp_path, deeptrain_home):
    """Import the scenes sample, train the Lite0 detector for one short epoch, open its evaluation (PR curves, the
    gallery), predict on an uploaded scene and see its boxes drawn on it; the score slider then hides some."""
    from core.data import scenes

    if not scenes.scenes_available():
        pytest.skip("Caltech-101 with BACKGROUND_Google not found")
    uploaded = scenes.compose(tmp_path / "mine", 1, 2, seed=7).parent / "images" / "scene_00000.jpg"
    with (streamlit_server(deeptrain_home) as url, browser_page(tmp_path) as page,
          saved_on_failure(page, tmp_path, deeptrain_home)):
        start_at(page, url, "Datasets", "Dataset name")
        page.get_by_text("Sample data", exact=True).click()
        wait_idle(page)
        choose(page, "Sample", "Detection scenes (Caltech-101)")
        type_into(page, "Dataset name", "scenes")
        for label, value in (("Scenes", "24"), ("Concepts", "2")):
            box = page.get_by_role("spinbutton", name=label, exact=True)
            box.fill(value)
            box.press("Enter")
            wait_idle(page)
        page.get_by_role("button", name="Import scenes", exact=True).click()
        page.get_by_text(re.compile(r"Imported 24 images into 'scenes'")).wait_for(timeout=60_000)
        wait_idle(page)
        assert_clean(page)

        open_page(page, "Train", "Hyperparameters")
        page.get_by_text("Visual Detector", exact=True).click()
        wait_idle(page)
        expect(page.get_by_role("combobox", name="Template", exact=True)).to_have_value(
            "Studio_EfficientNetLite0_RetinaNet", timeout=30_000)  # the first detector offered: weights offline
        wait_idle(page)
        slide(page, "image_size", ["Home"], 128)
        slide(page, "num_epochs", ["Home"], 1)
        threshold = page.get_by_role("spinbutton", name="`detection_score_threshold`")
        threshold.fill("0")  # an epoch's model scores low: keep every box, the Models page's slider filters them
        threshold.press("Enter")
        expect(page.get_by_test_id("stJson")).to_contain_text(re.compile(r'"detection_score_threshold":\s*0(\.0)?\b'))
        wait_idle(page)
        choose(page, "Dataset", "scenes")
        type_into(page, "Model name (optional)", "journey-detector")
        page.get_by_role("button", name="Start training").click()
        page.get_by_text(re.compile(r"Job \d+ is queued")).wait_for()
        wait_idle(page)

        open_page(page, "Jobs", "Show the team's jobs too")
        page.get_by_text(re.compile(r"Finished .*Model \d+ is on the Models page")).wait_for(timeout=TRAIN_TIMEOUT_MS)
        wait_idle(page)
        assert_clean(page)

        open_page(page, "Models", "Open model")
        evaluate_model(page, page.get_by_text("mAP@[.5:.95]").first)
        wait_idle(page)
        assert_clean(page)
        expect(page.get_by_test_id("stPlotlyChart").filter(has_text="Precision-recall at IoU 0.5")).to_have_count(1)
        expect(page.get_by_test_id("stImageCaption").filter(has_text="ground truth").first).to_be_visible()
        shot(page, tmp_path, "detector_evaluation")

        page.get_by_role("tab", name="Predict").click()
        wait_idle(page)
        page.get_by_test_id("stFileUploader").filter(has_text="Images").locator("input[type=file]").set_input_files(
            str(uploaded))
        page.get_by_test_id("stFileChipName").filter(has_text=uploaded.name).wait_for()
        page.get_by_role("button", name="Predict", exact=True).click()
        caption = page.get_by_test_id("stImageCaption").filter(has_text=re.compile(r"boxes above 0\.00"))
        caption.wait_for(timeout=60_000)
        wait_idle(page)
        assert_clean(page)
        shown, found = _boxes_shown(caption)
        assert shown == found > 0  # every box drawn at 0
        slider = page.get_by_role("slider", name="Score threshold")
        slider.focus()
        for step in range(1, 60):  # raise it a step at a time (filtering only) until a few boxes are left
            slider.press("ArrowRight")
            caption = page.get_by_test_id("stImageCaption").filter(has_text=f"boxes above {step / 100:.2f}")
            caption.wait_for()
            fewer, _ = _boxes_shown(caption)
            assert fewer <= shown
            shown = fewer
            if shown <= 8:
                break
        if shown == 0:
            slider.press("ArrowLeft")
            page.get_by_test_id("stImageCaption").filter(has_text=f"boxes above {(step - 1) / 100:.2f}").wait_for()
        wait_idle(page)
        assert_clean(page)
        page.get_by_test_id("stImage").last.scroll_into_view_if_needed()
        shot(page, tmp_path, "detector_predict")
        slider.press("End")  # 1.00: no box scores above it
        page.get_by_test_id("stImageCaption").filter(has_text=re.compile(r": 0 of \d+ boxes above 1\.00")).wait_for()
        assert_clean(page)


def _boxes_shown(caption) -> tuple[int, int]:
    """(boxes drawn, boxes found) from a detector prediction's caption "NAME: N of M boxes above T"."""
    shown, found = re.search(r": (\d+) of (\d+) boxes", caption.inner_text()).groups()
    return int(shown), int(found)
