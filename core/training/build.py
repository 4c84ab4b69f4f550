"""A run's parts, put together once: the template's network (or a transfer classifier on a base model's embedding)
on the device, its optimiser and schedule, the way of training (``modes.mode_for``) and the compile policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.models import GENERAL
from core.templates.schedule import Schedule, make_schedule
from core.training import data as tdata
from core.training.callbacks import Callbacks
from core.training.compiling import CompilePolicy
from core.training.modes import Mode, mode_for
from core.training.optim import make_optimizer, set_lr
from core.training.plan import Plan
from core.training.runtime import Runtime, training_device


@dataclass
class Run:
    """Everything one call of ``train`` trains with; the loop's position is in ``TrainState``."""

    plan: Plan
    run_dir: Path
    cb: Callbacks
    rt: Runtime
    net: nn.Module
    opt: torch.optim.Optimizer
    preprocess: dict
    base_desc: dict | None  # a transfer classifier's base (saved with the model)
    mode: Mode
    policy: CompilePolicy
    schedule: Schedule
    items_per_epoch: int
    steps_per_epoch: int
    head_fitted: bool = False  # the head was fitted before the loop (core.training.tuning): its one epoch has no steps

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def num_epochs(self) -> int:
        return self.mode.num_epochs

    @property
    def batch_size(self) -> int:
        return self.mode.batch_size

    def lr(self, global_step: int) -> float:
        return float(self.schedule(global_step))

    def set_lr(self, lr: float) -> None:
        set_lr(self.opt, lr)


def build_run(plan: Plan, run_dir: Path, cb: Callbacks) -> Run:
    """Build the network (seeded), place it, and make the optimiser, mode and compile policy for it."""
    device = training_device()
    mode_cls = mode_for(plan)
    torch.manual_seed(plan.seed)
    net, base_desc, preprocess = build_network_for(plan)
    rt = Runtime.create(device, preprocess, detector=mode_cls.detector)
    rt.place(net)
    opt = make_optimizer(plan.optimizer, plan.params, net, frozen_backbone=mode_cls.frozen_backbone)
    batch_size = int(plan.params["batch_size"])
    policy = CompilePolicy(net, batch_size, plan.options["compile"] if mode_cls.compiles else False, cb.log)
    mode = mode_cls(plan, net, rt, preprocess, cb, forward=policy.forward)
    items_per_epoch = int(plan.params.get("num_items_per_epoch") or 0) or len(mode.train_rows)
    steps_per_epoch = tdata.steps_per_epoch(items_per_epoch, batch_size)
    schedule = make_schedule(plan.kind, plan.template, plan.params, steps_per_epoch)
    return Run(plan=plan, run_dir=Path(run_dir), cb=cb, rt=rt, net=net, opt=opt, preprocess=preprocess,
               base_desc=base_desc, mode=mode, policy=policy, schedule=schedule, items_per_epoch=items_per_epoch,
               steps_per_epoch=steps_per_epoch)


def build_network_for(plan: Plan) -> tuple[nn.Module, dict | None, dict]:
    """(network, base description or None, preprocessing): the template's network, or for a transfer classifier on
    a base model (``core.models.networks.build_on_base``) the base network (a trained embedder's weights, or the
    general ImageNet EfficientNet-Lite0) -> L2-normalised embedding -> linear classifier, with the base's
    preprocessing."""
    from core.models import build_network, preprocess_config
    from core.models.io import load_model_dir, read_config
    from core.models.networks import (
        GENERAL_BASE,
        base_description,
        build_lite0_imagenet,
        build_on_base,
        general_preprocess,
    )

    num_classes = len(plan.concepts)
    base = plan.base_model
    if base is None:
        net: nn.Module = build_network(plan.kind, plan.template, plan.params, num_classes)
        return net, None, preprocess_config(plan.kind, plan.template, plan.params)
    base_net: nn.Module
    if base["id"] == GENERAL:
        desc = dict(GENERAL_BASE)
        base_net = build_lite0_imagenet(pretrained=True)  # a fresh copy: the shared general embedder is never mutated
        preprocess = general_preprocess(int(plan.params.get("image_size") or 224))
    else:
        cfg = read_config(base["path"])
        desc = base_description(cfg)
        base_net = load_model_dir(base["path"]).net
        preprocess = dict(cfg["preprocess"])
    return build_on_base(desc, plan.template, num_classes, base_net), desc, preprocess
