"""Preprocessing per template: how images are resized and normalised, as a plain dict stored with the model.

- ``short_side_crop`` (Clarifai_* and the transfer templates): image_size is the minimum side; resize the short side
  to it, then crop a square (random crop when training, centre crop otherwise).
- ``square`` (RSB-A1): resize to image_size x image_size (random resized crop when training, as the RSB recipe).
- ``detector``: no resizing here, so boxes stay in stored-image pixels; the detection model resizes (its min side is
  image_size) and normalises inside, and maps boxes back to the input's pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from core.models.networks import net_spec

if TYPE_CHECKING:
    import torch

DETECTOR_MAX_SIDE_RATIO = 5 / 3  # torchvision detectors here cap the longer side at 5/3 of image_size


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


def resize_pil(im, size: int, mode: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A PIL image resized exactly as ``make_transform(train=False)`` does (bicubic, antialiased), as (H, W, 3) uint8,
    with its geometry (x scale, y scale, left, top of the crop in resized pixels).

    PIL work only (it releases the GIL), no torch ops: safe on a helper thread beside a forward pass. ``mode``:
    "short_side_crop" (short side to ``size``, centre square), "square" (``size`` x ``size``) or "detector" (short
    side to ``size``, longer side at most 5/3 of it, aspect ratio kept, as the detection model's own resize does).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    bicubic = InterpolationMode.BICUBIC
    im = _rgb(im)
    w, h = im.size
    if mode == "square":
        out = TF.resize(im, [size, size], interpolation=bicubic, antialias=True)
        geom = (size / w, size / h, 0.0, 0.0)
    elif mode == "detector":
        scale = min(size / min(w, h), size * DETECTOR_MAX_SIDE_RATIO / max(w, h))
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        out = TF.resize(im, [nh, nw], interpolation=bicubic, antialias=True)
        geom = (nw / w, nh / h, 0.0, 0.0)
    elif mode == "short_side_crop":
        out = TF.resize(im, size, interpolation=bicubic, antialias=True)
        nw, nh = out.size
        out = TF.center_crop(out, [size, size])
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        geom = (nw / w, nh / h, float(left), float(top))
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return np.asarray(out, dtype=np.uint8), geom


def to_input(u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
             channels_last: bool) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float on ``device``: one batched op instead of per-image ones."""
    import torch

    x = u8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
