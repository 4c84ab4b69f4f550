"""The template catalog from the specification: parameter specs, validation, registry and learning-rate schedules.

Public API: ``list_templates(kind)``, ``get_template(kind, name)``, ``validate(kind, name, params)``,
``Template``, ``ParamSpec``, ``KINDS``, ``KIND_LABELS``; what each template builds and how it trains (``NetSpec``,
``OptimizerSpec``) in ``core.templates.recipe``; schedules in ``core.templates.schedule``.
"""

from core.templates.catalog import CATALOG, KIND_LABELS, KINDS, Template
from core.templates.params import ParamSpec
from core.templates.recipe import NetSpec, OptimizerSpec
from core.templates.registry import get_template, list_templates, template_names, validate

__all__ = [
    "CATALOG", "KINDS", "KIND_LABELS", "NetSpec", "OptimizerSpec", "ParamSpec", "Template", "get_template",
    "list_templates", "template_names", "validate",
]
