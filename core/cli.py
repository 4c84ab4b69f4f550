"""The command line: ``python -m core COMMAND ...``. Thin commands over core; no logic lives here.

Every command prints JSON with ``--json`` where it reports data, and exits 2 with a one-line message on stderr when
the input is refused (``UserError``), never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from core.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """``--set key=value`` pairs into a dict of strings (validation coerces the types)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- templates (issue: foundation)
# COMMANDS:templates


# ---------------------------------------------------------------- datasets
# COMMANDS:datasets


# ---------------------------------------------------------------- training
# COMMANDS:training


# ---------------------------------------------------------------- jobs
# COMMANDS:jobs


# ---------------------------------------------------------------- models, evaluation, prediction, export
# COMMANDS:models


# ---------------------------------------------------------------- visual search
# COMMANDS:search


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Deep Training Studio command line")
    sub = parser.add_subparsers(dest="command", required=True)
    # PARSERS:templates
    # PARSERS:datasets
    # PARSERS:training
    # PARSERS:jobs
    # PARSERS:models
    # PARSERS:search
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
