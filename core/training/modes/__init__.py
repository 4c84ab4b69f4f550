"""The ways of training, one class each with the same face (``Mode``): ``images`` (the full network on cached
pixels), ``features`` (a frozen backbone's cached features, the head only), ``detector`` (torchvision detectors on
cached pixels with boxes) and ``detector_features`` (a detector's frozen body's cached maps, the pyramid and head
only). ``mode_for`` is the one place that decides which a run uses."""

from __future__ import annotations

from core.training.modes.base import Batch, Mode
from core.training.modes.detector import DetectorFeaturesMode, DetectorMode
from core.training.modes.features import FeaturesMode
from core.training.modes.images import ImagesMode
from core.training.plan import Plan, backbone_frozen


def mode_for(plan: Plan) -> type[Mode]:
    """Detectors train as detectors, on their body's cached maps when it is frozen (base_gradient_multiplier 0); a
    transfer classifier on a base model, or any template with its backbone frozen, on cached features; everything
    else on images."""
    frozen = backbone_frozen(plan.params)
    if plan.kind == "detector":
        return DetectorFeaturesMode if frozen else DetectorMode
    if plan.base_model is not None or frozen:
        return FeaturesMode
    return ImagesMode


__all__ = ["Batch", "DetectorFeaturesMode", "DetectorMode", "FeaturesMode", "ImagesMode", "Mode", "mode_for"]
