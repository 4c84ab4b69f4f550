"""The catalog against the specification's own text (``../shared/seeds/*.txt`` and the README's published defaults):
every minimum, maximum and step the text gives is the catalog's, marked "spec"; whatever the text leaves out and the
catalog fills in is marked "chosen"."""

from __future__ import annotations

import math

import pytest

from core.templates import get_template, list_templates
from tests.spec_seeds import SEEDS, glossary, published_defaults, spec_bounds

if not SEEDS.is_dir():  # pragma: no cover - the specification travels with the project's shared folder
    pytest.skip(f"specification not found at {SEEDS}", allow_module_level=True)

BOUNDS = spec_bounds()
DEFAULTS = published_defaults()
CASES = [(kind, name, param, b) for (kind, name), params in BOUNDS.items() for param, b in params.items()]


def test_the_parser_read_every_template_of_the_spec():
    assert sorted(BOUNDS) == sorted([
        ("classifier", "MMClassification_ResNet_50_RSB_A1"), ("classifier", "Clarifai_InceptionBatchNorm"),
        ("classifier", "Clarifai_InceptionV2"), ("classifier", "Clarifai_ResNext"),
        ("classifier", "Clarifai_InceptionTransferEmbedNorm"), ("embedder", "Clarifai_ResNet_AngularMargin"),
        ("embedder", "Clarifai_InceptionBatchNorm"), ("embedder", "Clarifai_ResNext"),
    ])
    # 11 + 8 + 8 + 8 + 8 + 10 + 8 + 8 hyperparameters listed, and bounds found in most of them
    assert sum(len(p) for p in BOUNDS.values()) == 69
    assert sum(len(b) for p in BOUNDS.values() for b in p.values()) > 120


@pytest.mark.parametrize("kind,name,param,bounds", CASES, ids=[f"{k}-{n}-{p}" for k, n, p, _ in CASES])
def test_catalog_has_the_spec_bounds(kind, name, param, bounds):
    spec = get_template(kind, name).param(param)  # KeyError if the catalog lacks a parameter the spec lists
    for field in ("min", "max", "step"):
        ours = getattr(spec, field)
        if field in bounds:
            assert ours is not None and math.isclose(ours, bounds[field], abs_tol=1e-12), (field, ours, bounds)
            assert spec.source[field] == "spec"
        elif ours is not None:  # the spec gives no such bound: the catalog chose it and says so
            assert spec.source[field] == "chosen", f"{param}.{field} is not in the spec but marked {spec.source}"
            assert "hosen" in spec.help, f"{param}: help must say why {field} was chosen"
    if "step" in bounds:  # counts and stepped values: integers when the grid is whole
        assert spec.type == ("int" if float(bounds["step"]).is_integer() and spec.min == int(spec.min) else "float")


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_published_defaults(name):
    templates = [t for t in list_templates() if t.name == name]
    assert templates, name
    for template in templates:
        for param, value in DEFAULTS[name].items():
            spec = template.param(param)
            assert spec.source["default"] == "spec", (template.kind, name, param)
            if isinstance(value, float):
                assert math.isclose(float(spec.default), value, rel_tol=1e-12), (param, spec.default, value)
            else:
                assert spec.default == value, (param, spec.default, value)


def test_every_default_not_published_is_marked_chosen():
    """Defaults come from the README's published list, or from the spec text itself for num_items_per_epoch ("the
    number of images in the dataset", written 0); every other default is the catalog's choice and marked so."""
    for template in list_templates():
        published = DEFAULTS.get(template.name, {})
        for spec in template.params:
            where = (template.kind, template.name, spec.name)
            if spec.name in published:
                continue
            if spec.name == "num_items_per_epoch":
                assert spec.default == 0 and spec.source["default"] == "spec", where
            else:
                assert spec.source["default"] == "chosen", where


def test_parameters_beyond_the_spec_are_marked_chosen():
    """A parameter the spec does not list for a template (step_factor, pretrained_weights on Clarifai templates,
    every studio template parameter) has every field chosen."""
    for (kind, name), listed in BOUNDS.items():
        for spec in get_template(kind, name).params:
            if spec.name not in listed:
                assert set(spec.source.values()) == {"chosen"}, (kind, name, spec.name, spec.source)
                assert "hosen" in spec.help


def test_every_glossary_parameter_is_in_the_catalog():
    names = glossary()
    assert len(names) >= 15 and "per_128_lrate" in names and "use_perclass_regression" in names
    ours = {p.name for t in list_templates() for p in t.params}
    assert set(names) <= ours, set(names) - ours


def test_chosen_values_called_out_by_the_issue():
    rsb = get_template("classifier", "MMClassification_ResNet_50_RSB_A1")
    assert rsb.param("image_size").source == {"min": "chosen", "max": "chosen", "step": "chosen", "default": "spec"}
    assert rsb.param("warmup_ratio").source == {"min": "chosen", "max": "chosen", "default": "spec"}
    assert rsb.param("weight_decay").step is None and rsb.param("flip_probability").step is None
    am = get_template("embedder", "Clarifai_ResNet_AngularMargin")
    assert am.param("angular_margin").step is None
    assert am.param("embeddings_size").source["min"] == "chosen"
    assert am.param("angular_scale").default == 64 and am.param("angular_margin").default == 0.5
    assert get_template("classifier", "Clarifai_InceptionTransferEmbedNorm").param(
        "base_gradient_multiplier").source["max"] == "chosen"
    for t in list_templates():
        if t.has("num_items_per_epoch"):
            assert t.param("num_items_per_epoch").source["min"] == "chosen"
