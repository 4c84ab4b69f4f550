"""BN-Inception (Inception-v2): Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift", 2015, Figure 5 — GoogLeNet with every 5x5 replaced by two 3x3, batch normalisation after
every convolution, and stride-2 inception modules (3c, 4e) in place of separate pooling layers.

Written here from the paper's table; random initialisation (the template trains from scratch, as the spec says).
Channel widths are the paper's (and the Caffe release's): 3a 256, 3b 320, 3c 576, 4a-4b 576, 4c-4d 608, 4e 1056,
5a-5b 1024 output channels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ConvBN(nn.Sequential):
    """Convolution, batch normalisation, ReLU (the paper's unit)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
            nn.ReLU(inplace=True),
        )


class InceptionBN(nn.Module):
    """One inception module: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool (-> 1x1 projection).

    ``stride=2`` modules drop the 1x1 branch and pass the pooled input through unprojected (3c and 4e).
    """

    def __init__(
        self,
        cin: int,
        c1x1: int,
        c3x3_reduce: int,
        c3x3: int,
        cd3x3_reduce: int,
        cd3x3: int,
        pool: str,
        pool_proj: int,
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, c1x1, 1) if c1x1 else None
        self.branch3x3 = nn.Sequential(ConvBN(cin, c3x3_reduce, 1), ConvBN(c3x3_reduce, c3x3, 3, stride, 1))
        self.branch_double = nn.Sequential(
            ConvBN(cin, cd3x3_reduce, 1), ConvBN(cd3x3_reduce, cd3x3, 3, 1, 1), ConvBN(cd3x3, cd3x3, 3, stride, 1)
        )
        pooling = nn.MaxPool2d(3, stride, 1) if pool == "max" else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        self.branch_pool = nn.Sequential(pooling, ConvBN(cin, pool_proj, 1)) if pool_proj else pooling
        self.out_channels = c1x1 + c3x3 + cd3x3 + (pool_proj or cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.branch1x1(x)] if self.branch1x1 is not None else []
        parts += [self.branch3x3(x), self.branch_double(x), self.branch_pool(x)]
        return torch.cat(parts, 1)


class BNInception(nn.Module):
    """BN-Inception trunk with global average pooling; ``forward`` gives (B, 1024) features (no classifier)."""

    num_features = 1024

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBN(3, 64, 7, 2, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            ConvBN(64, 64, 1),
            ConvBN(64, 192, 3, 1, 1),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        # name: (in, #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool proj, stride)
        table: list[tuple[str, int, int, int, int, int, int, str, int, int]] = [
            ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
            ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
            ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
            ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
            ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
            ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
            ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
            ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
            ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
            ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
        ]
        blocks = []
        for row in table:
            blocks.append((f"inception_{row[0]}", InceptionBN(*row[1:])))
        self.blocks = nn.Sequential(OrderedDict(blocks))
        assert self.blocks[-1].out_channels == self.num_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)
