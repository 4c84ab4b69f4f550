"""The template catalog from the specification: parameter specs, validation, registry and learning-rate schedules.

Public API: ``list_templates(kind)``, ``get_template(kind, name)``, ``validate(kind, name, params)``,
``Template``, ``ParamSpec``, ``KINDS``, ``KIND_LABELS``; schedules in ``core.templates.schedule``.
"""

from core.templates.catalog import CATALOG, KIND_LABELS, KINDS, Template
from core.templates.params import ParamSpec
from core.templates.registry import get_template, list_templates, template_names, validate

__all__ = [
    "CATALOG", "KINDS", "KIND_LABELS", "ParamSpec", "Template", "get_template", "list_templates", "template_names",
    "validate",
]
