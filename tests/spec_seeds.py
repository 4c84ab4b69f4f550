"""Read the specification's text (``../shared/seeds/``): each template's hyperparameters with the minimum, maximum and
step the text gives, the published defaults, and the glossary. Used by the spec-bounds and Train-page tests, so the
catalog is checked against the documents themselves rather than against a copy of the catalog."""

from __future__ import annotations

import re
from pathlib import Path

SEEDS = Path(__file__).resolve().parent.parent.parent / "shared" / "seeds"
KIND_OF_FILE = {"classification-templates.txt": "classifier", "embedding-templates.txt": "embedder"}

_HEADING = re.compile(r"^(?:Clarifai|MMClassification)_\w+$")
_NUM = r"(-?\d+(?:\.\d+)?)"
_MIN = re.compile(r"minimum value it supports for customization is " + _NUM)
_MAX = re.compile(r"the maximum is " + _NUM)
_STEP = re.compile(r"step of " + _NUM)


def param_name(display: str) -> str:
    """The spec's display name ("Per item_lrate", "Num items_per_epoch") as the glossary's snake_case name."""
    return "_".join(display.strip().lower().split())


def spec_bounds() -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """{(kind, template): {param: {"min"?: x, "max"?: y, "step"?: z}}} for every template bullet list in the spec."""
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for filename, kind in KIND_OF_FILE.items():
        current: tuple[str, str] | None = None
        for line in (SEEDS / filename).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if _HEADING.match(text):
                current = (kind, text)
                out.setdefault(current, {})
                continue
            if current is None or not text.startswith("•") or "—" not in text:
                continue
            display, _, body = text.lstrip("• ").partition("—")
            bounds: dict[str, float] = {}
            for key, rx in (("min", _MIN), ("max", _MAX), ("step", _STEP)):
                m = rx.search(body)
                if m:
                    bounds[key] = float(m.group(1))
            out[current][param_name(display)] = bounds
    return out


def _value(text: str):
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def published_defaults() -> dict[str, dict[str, object]]:
    """{template name: {param: default}} from the README's "Published defaults" list (templates with values only)."""
    out: dict[str, dict[str, object]] = {}
    for line in (SEEDS / "README.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("- ") or ": " not in line or "no published defaults" in line:
            continue
        head, _, body = line[2:].partition(": ")
        names = re.findall(r"\b(?:Clarifai|MMClassification)_\w+", head)
        body = re.sub(r"\s*\([^)]*\)", "", body).rstrip(".")
        pairs = {}
        for item in body.split(", "):
            key, _, value = item.strip().partition(" ")
            if re.fullmatch(r"[a-z_0-9]+", key) and value:
                pairs[key] = _value(value)
        for name in names:
            out.setdefault(name, {}).update(pairs)
    return out


def glossary() -> list[str]:
    """The hyperparameter names of the overview's glossary."""
    text = (SEEDS / "deep-training-overview.txt").read_text(encoding="utf-8")
    return re.findall(r"^\s*•\s+([a-z][a-z0-9_]*)\s+[A-Z]", text, flags=re.M)
