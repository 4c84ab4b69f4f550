"""One of each (issue 18): pages show errors one way, and the leftovers of assembling files by hand stay gone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "pages").glob("*.py")), ROOT / "streamlit_app.py"]


def test_pages_show_caught_errors_through_ui_show_error():
    """Inside an ``except`` block a page calls ui.show_error (a user error's message, or an error id with the
    traceback in the server's log), never st.error/st.exception with the exception itself."""
    found = []
    for path in PAGES:
        for handler in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(handler, ast.ExceptHandler) or handler.name is None:
                continue
            for call in ast.walk(handler):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in ("error", "exception", "warning")
                        and isinstance(call.func.value, ast.Name) and call.func.value.id == "st"
                        and any(isinstance(n, ast.Name) and n.id == handler.name for a in call.args
                                for n in ast.walk(a))):
                    found.append(f"{path.name}:{call.lineno}")
    assert not found, f"use ui.show_error(exc[, prefix]) instead of st.error with the exception: {found}"


def test_no_hand_assembly_markers_left():
    cli = (ROOT / "core" / "cli.py").read_text(encoding="utf-8")
    assert "# COMMANDS:" not in cli and "# PARSERS:" not in cli and "(issue:" not in cli
    for path in PAGES:
        assert "noqa: E402" not in path.read_text(encoding="utf-8"), path.name
