"""Browser journey: names users write are shown as text. A concept named like a markdown image and a model and an
index named like a markdown link make no <img> and no <a> in any page's HTML, and read as the characters typed."""

from __future__ import annotations

import csv

import pytest

from tests.browser import browser_page, streamlit_server, wait_idle
from tests.conftest import caltech_slice

pytestmark = pytest.mark.browser

IMAGE_NAME = "![](https://example.invalid/t.png)"
LINK_NAME = "[Session expired](https://example.invalid/login)"
SHOUT_NAME = ":red[**ALERT**] <b>x</b> $x^2$"


def assert_text_only(page) -> None:
    html = page.content()
    assert page.locator("img[src*='example.invalid']").count() == 0, "an image was made from a name"
    links = page.locator("a[href*='example.invalid']")
    assert links.count() == 0, ("a link was made from a name", [links.nth(i).evaluate("e => e.parentElement.outerHTML")
                                                               for i in range(min(3, links.count()))])
    assert "<b>x</b>" not in html  # escaped by Streamlit anyway; the point is the markdown above
    assert "Traceback" not in page.inner_text("body")


def visible_text(page) -> str:
    """The page's text as a reader sees it (word joiners, which keep bare addresses from becoming links, removed)."""
    return page.inner_text("body").replace("\u2060", "")


def open_page(page, name: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name, exact=True).click()
    page.wait_for_timeout(500)
    wait_idle(page)


def test_user_written_names_are_text_everywhere(tmp_path, deeptrain_home):
    from core.data.importer import import_dataset
    from core.search import service
    from core.training import train

    src = caltech_slice(tmp_path / "src", classes=("ant", "anchor", "accordion"), per_class=4)
    names = {"ant": IMAGE_NAME, "anchor": LINK_NAME, "accordion": SHOUT_NAME}
    with open(src / "manifest.csv", "w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["path", "labels", "split"])
        for folder, label in names.items():
            for i, photo in enumerate(sorted((src / folder).iterdir())):
                rows.writerow([f"{folder}/{photo.name}", label, "val" if i == 0 else "train"])
    import_dataset("local", src / "manifest.csv", "hostile", fmt="csv", workers=1)
    train({"owner": "local", "dataset": "hostile", "kind": "classifier", "name": LINK_NAME, "seed": 0,
           "template": "Studio_EfficientNetLite0_Transfer",
           "params": {"pretrained_weights": "None", "image_size": 64, "num_epochs": 1, "batch_size": 8}},
          tmp_path / "run")
    service.build_index_now("local", "hostile", "general", "idx" + LINK_NAME.replace(" ", ""))

    with streamlit_server(deeptrain_home) as url, browser_page(tmp_path) as page:
        page.goto(url)
        page.get_by_text("At a glance").wait_for()
        wait_idle(page)
        for name in ("Datasets", "Models", "Visual Search"):
            open_page(page, name)
            assert_text_only(page)
            page.screenshot(path=str(tmp_path / f"hostile-{name}.png"))
        open_page(page, "Datasets")
        page.get_by_role("tab", name="Browse").click()
        wait_idle(page)
        assert_text_only(page)
        body = visible_text(page)
        assert IMAGE_NAME in body and LINK_NAME in body and ":red[**ALERT**]" in body  # the characters, as typed
        page.get_by_role("tab", name="Health report").click()
        wait_idle(page)
        assert_text_only(page)
        open_page(page, "Models")
        page.get_by_role("button", name="Evaluate").click()
        page.get_by_text("Confusion matrix", exact=True).wait_for(timeout=120_000)
        wait_idle(page)
        assert_text_only(page)
        assert LINK_NAME in visible_text(page)
        open_page(page, "Visual Search")
        page.get_by_text("Concept", exact=True).click()
        wait_idle(page)
        assert_text_only(page)
