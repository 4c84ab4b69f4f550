"""Browser journey: the home page in a real chromium against the running app."""

import pytest

from tests.browser import browser_page, streamlit_server, wait_idle

pytestmark = pytest.mark.browser


def test_home_page_shows_device_and_steps(tmp_path, deeptrain_home):
    with streamlit_server(deeptrain_home) as url, browser_page(tmp_path) as page:
        page.goto(url)
        page.get_by_text("Training device").wait_for()
        page.get_by_text("At a glance").wait_for()
        wait_idle(page)
        body = page.inner_text("body")
        assert "Training device" in body
        assert "CPU" in body or "GPU" in body
        for step in ("Datasets", "Train", "Jobs", "Models", "Visual search"):
            assert step in body
        assert "Traceback" not in body
        page.screenshot(path=str(tmp_path / "home.png"))
