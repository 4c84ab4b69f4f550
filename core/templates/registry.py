"""One registry over the catalog: look templates up by (kind, name) and validate hyperparameters against them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.errors import ValidationError
from core.templates.catalog import CATALOG, KINDS, Template

_REGISTRY: dict[tuple[str, str], Template] = {(t.kind, t.name): t for t in CATALOG}


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValidationError(f"Unknown template kind {kind!r}; available: {', '.join(KINDS)}")
    return kind


def list_templates(kind: str | None = None) -> list[Template]:
    """Every template, or those of one kind ("classifier", "embedder", "detector"), in catalog order."""
    if kind is None:
        return list(CATALOG)
    _check_kind(kind)
    return [t for t in CATALOG if t.kind == kind]


def template_names(kind: str) -> list[str]:
    return [t.name for t in list_templates(kind)]


def get_template(kind: str, name: str) -> Template:
    """The template addressed by (kind, name); unknown kind or name: ValidationError listing the choices."""
    _check_kind(kind)
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        raise ValidationError(
            f"Unknown {kind} template {name!r}; available: {', '.join(template_names(kind))}"
        ) from None


def validate(kind: str, name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The complete, checked hyperparameters of a template.

    Fills defaults for missing parameters, coerces types (strings from forms and ``--set`` included), and rejects
    unknown parameters, values out of range, off the step grid or not among the choices, with a message naming the
    parameter, the value and what is allowed. The trainer calls it too, so a crafted request cannot bypass the UI.
    """
    template = get_template(kind, name)
    params = dict(params or {})
    unknown = sorted(k for k in params if not template.has(k))
    if unknown:
        raise ValidationError(
            f"{kind} template {name} has no parameter {', '.join(repr(u) for u in unknown)}; "
            f"its parameters: {', '.join(p.name for p in template.params)}"
        )
    out: dict[str, Any] = {}
    for spec in template.params:
        out[spec.name] = spec.check(params[spec.name]) if spec.name in params else spec.default
    return out
