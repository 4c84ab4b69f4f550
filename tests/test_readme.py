"""The README's tour: every picture it shows is in docs/, taken by the browser journeys."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_screenshot_the_readme_shows_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", readme)
    assert len(shown) >= 7, shown  # a page each, and a refused upload
    missing = [p for p in shown if not (ROOT / p).is_file()]
    assert not missing, ("regenerate: DEEPTRAIN_SCREENSHOTS=docs .venv/bin/python -m pytest "
                         f"tests/test_browser_journeys.py; missing {missing}")
    journeys = (ROOT / "tests" / "test_browser_journeys.py").read_text(encoding="utf-8")
    for path in shown:  # each is written by a journey, so the command above renews it
        assert f'shot(page, tmp_path, "{Path(path).stem}")' in journeys, path
