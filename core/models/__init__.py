"""Networks for every catalog template, their weights, preprocessing, heads and saved-model IO.

Public API (imported lazily so that ``import core.models`` stays light for pages):
``build_network(kind, name, params, num_classes)``, ``preprocess_config(kind, name, params)``,
``make_transform(preprocess, train, flip_probability, flip_direction)``; submodules ``heads``, ``io``, ``weights``,
``general``.
"""

from __future__ import annotations

from typing import Any

# The general embedder's name: a transfer classifier's base model, an index's embedding model key, the CLI's default.
# One spelling for code; text shown to people may say "general" in its own words.
GENERAL = "general"


def build_network(kind: str, name: str, params: dict, num_classes: int) -> Any:
    """See :func:`core.models.networks.build_network`."""
    from core.models.networks import build_network as _build

    return _build(kind, name, params, num_classes)


def preprocess_config(kind: str, name: str, params: dict) -> dict:
    """See :func:`core.models.preprocess.preprocess_config`."""
    from core.models.preprocess import preprocess_config as _config

    return _config(kind, name, params)


def make_transform(preprocess: dict, train: bool, flip_probability: float = 0.0, flip_direction: str = "horizontal"):
    """See :func:`core.models.preprocess.make_transform`."""
    from core.models.preprocess import make_transform as _make

    return _make(preprocess, train, flip_probability, flip_direction)
