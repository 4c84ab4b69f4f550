"""Numbers as people read them, for messages and pages."""

from __future__ import annotations


def human_bytes(n: int | float | None) -> str:
    """``1536`` -> ``"1.5 KB"``; ``None`` (not known) -> ``"-"`` (binary multiples, as file managers show them)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
