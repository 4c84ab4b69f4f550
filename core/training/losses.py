"""Training targets and the losses a template declares (``Plan.loss``), as ``loss(outputs, multi_hot, single)``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SOFTMAX_LOSSES = ("ce", "arcface")  # one label per item: unlabelled items cannot be a target


def targets(records: list[dict], concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot (N, C) float32 and single-label (N,) int64 (first label in concept order; -1 when unlabelled)."""
    index = {c: i for i, c in enumerate(concepts)}
    multi = np.zeros((len(records), len(concepts)), dtype=np.float32)
    single = np.full(len(records), -1, dtype=np.int64)
    for n, r in enumerate(records):
        ids = sorted(index[c] for c in r["labels"] if c in index)
        multi[n, ids] = 1.0
        if ids:
            single[n] = ids[0]
    return multi, single


def loss_fn(loss: str, params: dict) -> LossFn:
    """loss(outputs, multi_hot, single) for a classifier or embedder loss ("bce", "ce", "arcface")."""
    if loss == "bce":
        return lambda out, multi, single: F.binary_cross_entropy_with_logits(out.float(), multi)
    if loss == "ce":  # soft targets spread evenly over an item's labels when it has several
        return lambda out, multi, single: F.cross_entropy(out.float(), multi / multi.sum(1, keepdim=True).clamp_min(1))
    if loss == "arcface":
        from core.models.heads import angular_margin_loss

        scale, margin = float(params["angular_scale"]), float(params["angular_margin"])
        return lambda out, multi, single: angular_margin_loss(out.float(), single, scale, margin)
    raise ValueError(f"unknown loss {loss!r}; available: bce, ce, arcface")
