"""Preprocessing per template: how images are resized and normalised, as a plain dict stored with the model.

- ``short_side_crop`` (Clarifai_* and the transfer templates): image_size is the minimum side; resize the short side
  to it, then crop a square (random crop when training, centre crop otherwise).
- ``square`` (RSB-A1): resize to image_size x image_size (random resized crop when training, as the RSB recipe).
- ``detector``: no resizing here, so boxes stay in stored-image pixels; the detection model resizes (its min side is
  image_size) and normalises inside, and maps boxes back to the input's pixels.
"""

from __future__ import annotations

from typing import Callable

from core.models.networks import net_spec


def preprocess_config(kind: str, name: str, params: dict) -> dict:
    """{"image_size", "resize", "mean", "std"} for template (kind, name) with validated ``params``."""
    spec = net_spec(kind, name)
    return {
        "image_size": int(params.get("image_size") or 224),
        "resize": spec.resize,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


def make_transform(
    preprocess: dict, train: bool, flip_probability: float = 0.0, flip_direction: str = "horizontal"
) -> Callable:
    """A callable PIL image -> float tensor (3, H, W), normalised as ``preprocess`` says.

    ``flip_probability`` applies to training only; ``flip_direction`` is "horizontal" or "vertical".
    """
    from torchvision import transforms as T

    size = int(preprocess["image_size"])
    steps: list = [T.Lambda(_rgb)]
    resize = preprocess["resize"]
    if resize == "detector":
        steps.append(T.ToTensor())  # the detection model normalises and resizes itself
        return T.Compose(steps)
    bicubic = T.InterpolationMode.BICUBIC
    if resize == "square":
        if train:
            steps.append(T.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=bicubic, antialias=True))
        else:
            steps.append(T.Resize((size, size), interpolation=bicubic, antialias=True))
    elif resize == "short_side_crop":
        steps.append(T.Resize(size, interpolation=bicubic, antialias=True))
        steps.append(T.RandomCrop(size) if train else T.CenterCrop(size))
    else:
        raise ValueError(f"unknown resize mode {resize!r}")
    if train and flip_probability > 0:
        flip = T.RandomVerticalFlip if flip_direction == "vertical" else T.RandomHorizontalFlip
        steps.append(flip(p=float(flip_probability)))
    steps += [T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])]
    return T.Compose(steps)


def _rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")
