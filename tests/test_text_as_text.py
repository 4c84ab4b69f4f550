"""User-written text is shown as text: markdown, Streamlit directives and bare addresses in names do nothing; an
unexpected error shows an error id, never a traceback, which goes to the server's log under that id."""

from __future__ import annotations

import logging

from streamlit.testing.v1 import AppTest

from core import ui
from tests.conftest import ROOT, shown


def test_md_leaves_nothing_for_markdown_to_act_on():
    for name in ("![](https://example.invalid/t.png)", "[Session expired](https://example.invalid/login)",
                 ":red[**ALERT**]", "$x^2$", "<b>x</b>", "# heading", "a_b_c", "`code`", "~~gone~~", "| a | b |"):
        escaped = ui.md(name)
        assert shown(escaped).replace("\u2060", "") == name  # reads as typed
        for plain in "![]()*_`~$<>#|:":
            assert f"\\{plain}" in escaped or plain not in name  # every such character is escaped
    assert ui.md("line one\nline two") == "line one line two"
    assert "://" not in ui.md("https://example.invalid") and "@\u2060" in ui.md("a@example.org")


def test_an_unexpected_error_shows_an_id_and_logs_the_traceback(monkeypatch, caplog):
    from core.search import service

    def broken(*args, **kwargs):
        raise RuntimeError("SELECT secret FROM /srv/studio/data/studio.db")

    monkeypatch.setattr(service, "list_indexes", broken)
    with caplog.at_level(logging.ERROR, logger="deeptrain"):
        at = AppTest.from_file(str(ROOT / "pages" / "5_Visual_Search.py"), default_timeout=60).run()
    assert not at.exception
    [error] = at.error
    assert "error id" in error.value and "secret" not in error.value and "/srv" not in error.value
    error_id = error.value.split("error id ")[1][:8]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
