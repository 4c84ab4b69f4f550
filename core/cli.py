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
def cmd_templates(args: argparse.Namespace) -> int:
    """List the template catalog (``--kind`` to filter); ``--json`` prints every parameter spec."""
    from core.templates import list_templates

    templates = list_templates(args.kind)
    if args.json:
        _print_json([t.to_json() for t in templates])
        return 0
    for t in templates:
        dim = t.embedding_dim if t.embedding_dim is not None else "-"
        print(f"{t.kind:<10} {t.name:<36} dim={dim:<5} {t.network}")
        for p in t.params:
            bounds = p.allowed()
            print(f"    {p.name:<26} default={p.default!r:<14} {bounds}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the validated hyperparameters of KIND NAME with ``--set`` overrides (exit 2 with the reason if refused)."""
    from core.templates import validate

    _print_json(validate(args.kind, args.name, _parse_sets(args.set)))
    return 0


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
    p = sub.add_parser("templates", help="list the template catalog")
    p.add_argument("--kind", choices=["classifier", "embedder", "detector"], help="only templates of this kind")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_templates)
    p = sub.add_parser("validate", help="validate a template's hyperparameters and print them as JSON")
    p.add_argument("kind", help="classifier, embedder or detector")
    p.add_argument("name", help="template name (see `templates`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    p.set_defaults(func=cmd_validate)
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
