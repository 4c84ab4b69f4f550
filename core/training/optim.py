"""The optimiser a template declares, over parameter groups: weights with decay, norms and biases without (as in the
RSB recipe and timm), the backbone at lrate x base_gradient_multiplier. The schedule sets each group's rate per step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from core.templates.recipe import OptimizerSpec

NON_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@runtime_checkable
class SplitNetwork(Protocol):
    """A network that says which parameters are its backbone and which its head (StudioNet, the detectors)."""

    def backbone_parameters(self) -> Iterator[nn.Parameter]: ...

    def head_parameters(self) -> Iterator[nn.Parameter]: ...


def param_groups(named: list[tuple[str, nn.Parameter]], modules: nn.Module, weight_decay: float,
                 lr_mult: float) -> list[dict]:
    """Two groups of the trainable ``named`` parameters: weights with decay, norms and biases without."""
    no_decay_ids: set[int] = set()
    for m in modules.modules():
        if isinstance(m, NON_DECAY_TYPES):
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for _, p in named:
        if not p.requires_grad:
            continue
        (plain if p.ndim <= 1 or id(p) in no_decay_ids else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr_mult": lr_mult})
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lr_mult": lr_mult})
    return groups


def split_params(net: nn.Module) -> tuple[list, list]:
    """(backbone, head) named parameters, from the network's own split when it has one."""
    if isinstance(net, SplitNetwork):
        head_ids = {id(p) for p in net.head_parameters()}
        backbone_ids = {id(p) for p in net.backbone_parameters()}
        named = list(net.named_parameters())
        return [(n, p) for n, p in named if id(p) in backbone_ids], [(n, p) for n, p in named if id(p) in head_ids]
    return [], list(net.named_parameters())


def make_optimizer(spec: OptimizerSpec, params: dict, net: nn.Module, frozen_backbone: bool) -> torch.optim.Optimizer:
    """The template's optimiser for ``net``; ``frozen_backbone`` (features computed once) trains the head only, and
    base_gradient_multiplier 0 freezes the backbone too. Rates start at 0: ``set_lr`` gives each step's."""
    mult = float(params.get("base_gradient_multiplier", 1.0))
    decay = spec.decay(params)
    backbone, head = split_params(net)
    if frozen_backbone:
        for _, p in backbone:
            p.requires_grad_(False)
        groups = param_groups(head, net, decay, 1.0)
    elif backbone and mult != 1.0:
        if mult == 0.0:
            for _, p in backbone:
                p.requires_grad_(False)
        groups = param_groups(backbone, net, decay, mult) + param_groups(head, net, decay, 1.0)
    else:
        groups = param_groups(list(net.named_parameters()), net, decay, 1.0)
    for g in groups:
        g["lr"] = 0.0
    fused = {"fused": True}  # one kernel per step for all parameters, on CUDA and CPU (torch >= 2.4)
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=spec.betas, **fused)
    return torch.optim.SGD(groups, lr=0.0, momentum=spec.momentum, **fused)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """This step's rate in every group, times the group's multiplier (the backbone's base_gradient_multiplier)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
