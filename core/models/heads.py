"""Heads on top of a backbone's pooled features: linear classifier, L2-normalised embedding, cosine classifier, and the
additive angular margin (ArcFace) loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class L2Norm(nn.Module):
    """Scale each row to unit length (the normalised embedding of Clarifai_InceptionTransferEmbedNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


class SqrtL2Norm(nn.Module):
    """Each feature's signed square root, then each row scaled to unit length: power normalisation (Perronnin et al.,
    "Improving the Fisher kernel", 2010). On pooled activations, which are non-negative and dominated by a few large
    channels, it evens out their weight; a linear classifier on the result is one on the Hellinger kernel.

    ``eps`` keeps the slope finite at zero (1 / (2 sqrt(eps)) there, not infinite), so a backbone that trains behind
    it gets no NaN gradient from a channel that pooled to exactly zero; values move by at most sqrt(eps) = 1e-6.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        root = torch.sqrt(x.abs() + self.eps) - math.sqrt(self.eps)
        return F.normalize(torch.sign(x) * root, dim=1)


class CosineClassifier(nn.Module):
    """Logits are cosines between the L2-normalised embedding and L2-normalised class weights, in [-1, 1].

    The angular margin and the scale are applied by :func:`angular_margin_loss` during training; at inference the
    probabilities are ``softmax(scale * cosine)``.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in fp32 even under bf16 autocast: bf16 rounds a cosine near 1 to steps of 2^-8, a step of 0.25 in the
        # logit once ArcFace scales it by 64
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))


def angular_margin_logits(cosines: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """ArcFace logits: ``s * cos(theta + m)`` for each row's target class, ``s * cos(theta)`` elsewhere.

    Where ``theta + m`` passes pi, ``cos(theta + m)`` would rise again and reward a worse angle; the usual fallback
    (InsightFace's ``easy_margin=False``) uses ``cos(theta) - m * sin(m)`` there, which keeps the target logit
    decreasing in theta and continuous at ``theta = pi - m``.

    Args:
        cosines: (B, C) cosine similarities in [-1, 1].
        targets: (B,) class indices.
        scale: s, the radius of the hypersphere (angular_scale).
        margin: m in radians (angular_margin).
    """
    cosines = cosines.float().clamp(-1.0, 1.0)
    target_cos = cosines.gather(1, targets.view(-1, 1))
    sin = torch.sqrt((1.0 - target_cos * target_cos).clamp_min(0.0))
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    with_margin = target_cos * cos_m - sin * sin_m  # cos(theta + m)
    threshold = math.cos(math.pi - margin)  # theta > pi - m  <=>  cos(theta) < cos(pi - m)
    fallback = target_cos - margin * sin_m
    target_logit = torch.where(target_cos > threshold, with_margin, fallback)
    logits = cosines.scatter(1, targets.view(-1, 1), target_logit)
    return logits * scale


def angular_margin_loss(cosines: torch.Tensor, targets: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """Additive angular margin loss (Deng et al., ArcFace 2019): cross-entropy over :func:`angular_margin_logits`."""
    return F.cross_entropy(angular_margin_logits(cosines, targets, scale, margin), targets)
