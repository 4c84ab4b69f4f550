"""CSV cells a spreadsheet cannot run: every CSV the studio writes goes through :func:`writer` (or :func:`cell`).

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets, so a label such as ``=cmd|'/C calc'!A0`` would run when someone opens an export (CSV injection). OWASP's
rule: prefix such a cell with a single quote, which spreadsheets show as text. Numbers are written as they are (a
float or int cannot carry a formula, and ``-0.5`` must stay a number).

The prefix is reversible: the studio's CSV reader (``core.data.sources.read_csv_manifest``) removes one leading quote
from a cell that starts with quotes followed by one of those characters (:func:`unquote`). So that a value that
itself starts with ``'=`` survives the round trip too, :func:`cell` prefixes any run of leading quotes followed by a
formula character (``'=x`` is written ``''=x`` and read back as ``'=x``). Any other cell is written and read unchanged
(``'abc`` stays ``'abc``). A hand-written manifest whose cell really means ``'=x`` must write ``''=x``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTE = re.compile(r"'*[=+\-@\t\r]")
_QUOTED = re.compile(r"'+[=+\-@\t\r]")


def cell(value: Any) -> Any:
    """``value`` safe for a spreadsheet: text starting with a formula character (after any quotes) gets a leading
    ``'``; numbers, None and other text are returned as they are."""
    if isinstance(value, str) and _NEEDS_QUOTE.match(value):
        return "'" + value
    return value


def unquote(text: str) -> str:
    """The inverse of :func:`cell` for a cell read back: one leading ``'`` removed when quotes and a formula
    character start it; any other text unchanged."""
    return text[1:] if _QUOTED.match(text) else text


class _SafeWriter:
    """``csv.writer`` whose rows pass through :func:`cell`."""

    def __init__(self, out: TextIO, **kwargs: Any) -> None:
        self._w = csv.writer(out, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._w.writerow([cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out: TextIO, **kwargs: Any) -> _SafeWriter:
    """A ``csv.writer`` over ``out`` (same keyword arguments) that neutralises formula cells."""
    return _SafeWriter(out, **kwargs)
