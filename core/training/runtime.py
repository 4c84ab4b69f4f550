"""Where and in what numerics a run computes: the device, bf16 autocast, channels_last, the input normalisation."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from core.device import channels_last_for, cuda_bf16
from core.models.preprocess import to_input


@dataclass(frozen=True)
class StepSettings:
    """How a training step uses the device (shared with bench/bench_throughput.py so it measures this engine)."""

    channels_last: bool
    amp_bf16: bool
    fused_optimizer: bool


def step_settings(device: torch.device, image_size: int, detector: bool = False) -> StepSettings:
    """bf16 autocast where the GPU computes in bf16, except for detectors; channels_last as
    ``core.device.channels_last_for`` says (CUDA, and the CPU from moderate image sizes); fused optimiser steps (one
    kernel for all parameters) on both.

    Detectors train in fp32: under autocast torchvision decodes boxes in the head's dtype, and bf16 holds coordinates
    from 512 to 1023 px only to multiples of 4, while ``batched_nms`` offsets each class's boxes by ``label x (max +
    1)`` before suppressing, which rounds them to 16-128 px; NMS then keeps or drops the wrong boxes."""
    return StepSettings(
        channels_last=channels_last_for(device, image_size, detector),
        amp_bf16=device.type == "cuda" and not detector and cuda_bf16(),
        fused_optimizer=True,
    )


def training_device() -> torch.device:
    """The device training runs on (CUDA when present), with TF32 matmuls and convolutions allowed there."""
    from core.device import torch_device

    device = torch_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


@dataclass
class Runtime:
    """The device and numerics of one run, and the normalisation of its input pixels."""

    device: torch.device
    settings: StepSettings
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, device: torch.device, preprocess: dict, detector: bool) -> Runtime:
        """For a network with this preprocessing; ``detector``: fp32, and images of varying shapes (cuDNN would
        re-tune every convolution for each new shape, so it does not benchmark)."""
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not detector
        return cls(
            device=device,
            settings=step_settings(device, int(preprocess["image_size"]), detector),
            mean=torch.tensor(preprocess["mean"], dtype=torch.float32, device=device),
            std=torch.tensor(preprocess["std"], dtype=torch.float32, device=device),
        )

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp(self) -> bool:
        return self.settings.amp_bf16

    @property
    def channels_last(self) -> bool:
        return self.settings.channels_last

    def autocast(self) -> AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def place(self, net: torch.nn.Module) -> None:
        """Move ``net`` to the device in this run's memory format (either way explicitly: a base network from a loaded
        model may arrive in channels_last, LoadedModel's choice at its own image size)."""
        net.to(self.device)
        net.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def input(self, u8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 pixels -> the normalised batch on the device."""
        return to_input(u8, self.mean, self.std, self.device, self.channels_last)

    def tensor(self, a: np.ndarray, non_blocking: bool = False) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device, non_blocking=non_blocking)
