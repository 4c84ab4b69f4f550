"""The training loop: any catalog template on a stored dataset version, on CUDA when present, else on every CPU core.

``train(config, run_dir, callbacks, resume)`` validates the configuration with the catalog (a crafted request cannot
pass the UI's bounds), builds the template's network, trains it with the template's schedule, writes a crash-safe
checkpoint every epoch (and when asked to stop), records per-epoch metrics, and registers the finished model.

Three ways through the data, chosen by the template and its parameters:
- ``images``: the full network on cached pixels with on-the-fly augmentation.
- ``features``: a frozen backbone (base_gradient_multiplier 0 on a transfer template): backbone features are computed
  once per (dataset version, weights, image size, flips) and cached on disk, and only the head trains, in seconds.
- ``detector``: torchvision detection models on cached pixels with boxes, horizontal flips move the boxes too.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import csvsafe, paths
from core.device import channels_last_for, cuda_bf16
from core.errors import UserError
from core.models.preprocess import to_input
from core.training import data as tdata
from core.training.callbacks import Callbacks
from core.training.checkpoint import (
    BEST, atomic_write_bytes, load_checkpoint, read_state, save_checkpoint, update_state,
)

SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 1e-4  # the Clarifai templates give no weight decay; 1e-4 is the usual ImageNet SGD value
CROP_SCALE = (0.35, 1.0)  # random resized crops on the fly (area range), as core.models.preprocess's training transform
MAX_GALLERY = 5000  # embedders: at most this many training items as the retrieval gallery during validation
EVAL_BATCH = 64
# Frozen backbone on the CPU: the head's steps are tiny matmuls where a second OpenMP thread only adds a barrier per
# op, and a barrier that collapses when anything else wants a core (measured here: 2 threads 335 images/s, 1 thread
# 4,500, with another process busy; see bench/README.md, background jobs).
CPU_HEAD_THREADS = 1
# options.compile "auto" (the default): after this many steps the run estimates its remaining training time, and
# compiles the network's forward pass (torch.compile) when that is over AUTO_COMPILE_MIN_SECONDS. Compiling costs
# ~50-80 s on a 2-core CPU and pays 1.05-1.2x (bench/README.md, throughput), so only long runs gain; short runs and
# tests never compile. After as many compiled steps, it keeps the compiled forward only if its steps are faster.
AUTO_COMPILE_PROBE_STEPS = 8
AUTO_COMPILE_MIN_SECONDS = 30 * 60
NON_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


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


class TrainingDiverged(UserError):
    """The loss stopped being a finite number; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a run produced. ``model_id`` is None when the run stopped before the end (``stopped``)."""

    model_id: int | None
    metrics: dict
    stopped: bool
    epochs_done: int
    model_path: str | None = None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ plan: everything decided before heavy work


@dataclass
class Plan:
    owner: str
    kind: str
    template: str
    params: dict
    dataset: dict
    concepts: list[str]
    train_records: list[dict]
    eval_records: list[dict]
    eval_split: str
    seed: int
    name: str | None
    run: str
    options: dict
    base_model: dict | None
    mode: str = "images"  # images | features | detector
    loss: str = "ce"  # ce | bce | arcface | detector
    optimizer: str = "sgd"  # sgd | adamw

    def config_identity(self) -> dict:
        """What must not change between a run and its resume (num_epochs may grow: that is extending)."""
        params = {k: v for k, v in self.params.items() if k != "num_epochs"}
        return {
            "owner": self.owner, "kind": self.kind, "template": self.template, "params": params,
            "dataset_id": self.dataset["id"], "dataset_version": self.dataset["version"], "seed": self.seed,
            "concepts": self.concepts,
            "base_model": self.base_model["id"] if self.base_model else None,
        }


def training_options(raw: dict | None) -> dict:
    """Training options that are not template parameters (the spec's bounds do not cover them)."""
    raw = dict(raw or {})
    patience = raw.pop("early_stopping_patience", None)
    patience = None if patience in (None, "", 0, "0") else int(patience)
    if patience is not None and patience < 1:
        raise UserError(f"early_stopping_patience: {patience} is not allowed; use an integer >= 1, or leave it unset")
    restore_best = bool(raw.pop("restore_best", patience is not None))
    compile_net = raw.pop("compile", None)
    if compile_net is None:
        compile_net = "auto"
    elif isinstance(compile_net, str):
        compile_net = {"true": True, "false": False}.get(compile_net.lower(), compile_net.lower())
    if not (isinstance(compile_net, bool) or compile_net == "auto"):
        raise UserError(f"compile: {compile_net!r} is not allowed; use true, false or \"auto\" (the default: "
                        f"compile when more than {AUTO_COMPILE_MIN_SECONDS // 60} minutes of training are left)")
    if raw:
        raise UserError(f"training options: unknown {sorted(raw)}; allowed: early_stopping_patience, restore_best, "
                        "compile")
    return {"early_stopping_patience": patience, "restore_best": restore_best, "compile": compile_net}


def make_plan(config: dict, run_dir: Path) -> Plan:
    """Validate the request and gather what the run needs; refusals are UserErrors naming the field."""
    from core.store import datasets as dstore
    from core.store import models as mstore
    from core.templates import validate

    for key in ("dataset", "kind", "template"):
        if not config.get(key):
            raise UserError(f"training configuration: {key!r} is required")
    owner = config.get("owner") or paths.DEFAULT_USER
    kind, template = str(config["kind"]), str(config["template"])
    params = validate(kind, template, dict(config.get("params") or {}))
    dataset = dstore.get_dataset(owner, str(config["dataset"]))
    concepts = list(dstore.dataset_concepts(dataset["id"]))
    records = dstore.dataset_records(dataset["id"])
    split = dstore.eval_split(dataset["id"])
    train_records = [r for r in records if r["split"] == "train"]
    eval_records = [r for r in records if r["split"] == split]
    if not train_records:
        raise UserError(f"dataset {dataset['name']!r}: no images in the train split; set a train/validation split")
    if kind == "detector":
        if not any(r["boxes"] for r in train_records):
            raise UserError(f"dataset {dataset['name']!r}: no boxes in the train split; a detector needs images with "
                            "boxes (import a COCO JSON)")
    elif len(concepts) < 2:
        raise UserError(f"dataset {dataset['name']!r}: {len(concepts)} concept(s); a {kind} needs at least 2")
    seed = int(config.get("seed") or 0)
    name = config.get("name") or None
    if name is not None:
        name = str(name).strip()
        if not name:
            raise UserError("model name: must not be empty")
    base_model = None
    if config.get("base_model") not in (None, "", "none"):
        base_model = _resolve_base_model(owner, config["base_model"], kind, params)
    plan = Plan(
        owner=owner, kind=kind, template=template, params=params, dataset=dataset, concepts=concepts,
        train_records=train_records, eval_records=eval_records, eval_split=split, seed=seed, name=name,
        run=str(config.get("run") or Path(run_dir).name), options=training_options(config.get("options")),
        base_model=base_model,
    )
    if kind == "detector":
        plan.mode, plan.loss = "detector", "detector"
    elif base_model is not None or float(params.get("base_gradient_multiplier", 1.0)) == 0.0:
        plan.mode = "features"
    if kind != "detector":
        if "angular_margin" in params:
            plan.loss = "arcface"
        elif "logreg" in params:
            plan.loss = "bce" if int(params["logreg"]) == 1 else "ce"
        else:  # RSB-A1: binary cross-entropy as in the recipe
            plan.loss = "bce"
    plan.optimizer = "adamw" if "warmup_iters" in params and "weight_decay" in params else "sgd"
    if name is not None and mstore.name_taken(owner, name):
        state = read_state(Path(run_dir) / "checkpoints")
        if not (state and state.get("model_name") == name):
            raise UserError(f"model name {name!r}: already used; choose another name")
    return plan


def _resolve_base_model(owner: str, ref: Any, kind: str, params: dict) -> dict:
    """A trained embedder (or "general") as the frozen base of a transfer classifier."""
    from core.store import models as mstore

    if kind != "classifier" or "base_gradient_multiplier" not in params:
        raise UserError("base_model: only a transfer classifier template (one with base_gradient_multiplier) can be "
                        "trained on a base model")
    if str(ref) == "general":
        return {"id": "general", "name": "general", "path": None, "kind": "embedder"}
    row = mstore.get_model(owner, ref)
    if row["kind"] != "embedder":
        raise UserError(f"base_model {ref!r}: is a {row['kind']}; choose a trained embedder or 'general'")
    return row


def _build_on_base(plan: Plan, num_classes: int) -> tuple[nn.Module, dict, dict]:
    """A transfer classifier on a base model's embedding (``core.models.networks.build_on_base``): the base network
    (a trained embedder's weights, or the general ImageNet EfficientNet-Lite0) -> L2-normalised embedding -> linear
    classifier. Returns (network, base description for the saved config, preprocessing: the base's)."""
    from core.models.io import load_model_dir, read_config
    from core.models.networks import GENERAL_BASE, base_description, build_lite0_imagenet, build_on_base

    base = plan.base_model
    if base["id"] == "general":
        from core.models.general import general_config

        desc = dict(GENERAL_BASE)
        base_net = build_lite0_imagenet(pretrained=True)  # a fresh copy: the shared general embedder is never mutated
        preprocess = general_config(int(plan.params.get("image_size") or 224))["preprocess"]
    else:
        cfg = read_config(base["path"])
        desc = base_description(cfg)
        base_net = load_model_dir(base["path"]).net
        preprocess = dict(cfg["preprocess"])
    return build_on_base(desc, plan.template, num_classes, base_net), desc, preprocess


# ------------------------------------------------------------------ targets, losses, optimisers


def _targets(records: list[dict], concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
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


def _loss_fn(plan: Plan) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(outputs, multi_hot, single) for the plan's loss."""
    if plan.loss == "bce":
        return lambda out, multi, single: F.binary_cross_entropy_with_logits(out.float(), multi)
    if plan.loss == "ce":  # soft targets spread evenly over an item's labels when it has several
        return lambda out, multi, single: F.cross_entropy(out.float(), multi / multi.sum(1, keepdim=True).clamp_min(1))
    if plan.loss == "arcface":
        from core.models.heads import angular_margin_loss

        scale, margin = float(plan.params["angular_scale"]), float(plan.params["angular_margin"])
        return lambda out, multi, single: angular_margin_loss(out.float(), single, scale, margin)
    raise ValueError(plan.loss)


def _param_groups(named: list[tuple[str, nn.Parameter]], modules: nn.Module, weight_decay: float,
                  lr_mult: float) -> list[dict]:
    """Two groups: weights with decay, norms and biases without (as in the RSB recipe and timm)."""
    no_decay_ids = set()
    for m in modules.modules():
        if isinstance(m, NON_DECAY_TYPES):
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, plain = [], []
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


def _split_params(net: nn.Module) -> tuple[list, list]:
    """(backbone, head) named parameters, from the network's own split when it has one."""
    if hasattr(net, "backbone_parameters") and hasattr(net, "head_parameters"):
        head_ids = {id(p) for p in net.head_parameters()}
        backbone_ids = {id(p) for p in net.backbone_parameters()}
        named = list(net.named_parameters())
        return [(n, p) for n, p in named if id(p) in backbone_ids], [(n, p) for n, p in named if id(p) in head_ids]
    return [], list(net.named_parameters())


def _optimizer(plan: Plan, net: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    mult = float(plan.params.get("base_gradient_multiplier", 1.0))
    backbone, head = _split_params(net)
    if plan.mode == "features":
        for _, p in backbone:
            p.requires_grad_(False)
        groups = _param_groups(head, net, _weight_decay(plan), 1.0)
    elif backbone and mult != 1.0:
        if mult == 0.0:
            for _, p in backbone:
                p.requires_grad_(False)
        groups = _param_groups(backbone, net, _weight_decay(plan), mult) + _param_groups(head, net,
                                                                                         _weight_decay(plan), 1.0)
    else:
        groups = _param_groups(list(net.named_parameters()), net, _weight_decay(plan), 1.0)
    for g in groups:
        g["lr"] = 0.0
    fused = {"fused": True}  # one kernel per step for all parameters, on CUDA and CPU (torch >= 2.4)
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), **fused)
    return torch.optim.SGD(groups, lr=0.0, momentum=SGD_MOMENTUM, **fused)


def _weight_decay(plan: Plan) -> float:
    return float(plan.params["weight_decay"]) if "weight_decay" in plan.params else SGD_WEIGHT_DECAY


def _flips(plan: Plan) -> tuple[float, str]:
    """Training flips: RSB's flip_probability/flip_direction; average_horizontal_flips (0.5 when on); else
    horizontal with probability 0.5 (the usual choice; the spec gives the other templates no flip parameter)."""
    p = plan.params
    if "flip_probability" in p:
        return float(p["flip_probability"]), str(p.get("flip_direction", "horizontal"))
    if "average_horizontal_flips" in p:
        return (0.5 if bool(p["average_horizontal_flips"]) else 0.0), "horizontal"
    return 0.5, "horizontal"


# ------------------------------------------------------------------ the run


class _Session:
    """One call of ``train``: the plan, device, network, optimiser and the loop's state."""

    def __init__(self, plan: Plan, run_dir: Path, cb: Callbacks) -> None:
        from core.device import torch_device

        self.plan, self.run_dir, self.cb = plan, Path(run_dir), cb
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = torch_device()
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        p = plan.params
        self.batch_size = int(p["batch_size"])
        self.num_epochs = int(p["num_epochs"])
        self.flip_p, self.flip_dir = _flips(plan)

    # -------------------------------------------------------------- setup
    def build(self) -> None:
        from core.models import build_network, preprocess_config

        plan = self.plan
        torch.manual_seed(plan.seed)
        num_classes = len(plan.concepts)
        self.base_desc = None
        if plan.base_model is not None:
            self.net, self.base_desc, self.preprocess = _build_on_base(plan, num_classes)
        else:
            self.net = build_network(plan.kind, plan.template, plan.params, num_classes)
            self.preprocess = preprocess_config(plan.kind, plan.template, plan.params)
        self.settings = step_settings(self.device, int(self.preprocess["image_size"]), plan.mode == "detector")
        self.amp = self.settings.amp_bf16
        if self.cuda:  # detector batches change shape (aspect ratios): cuDNN would re-tune every convolution each time
            torch.backends.cudnn.benchmark = plan.mode != "detector"
        self.channels_last = self.settings.channels_last
        self.net.to(self.device)
        # either way explicitly: a base network from a loaded model may arrive in channels_last (LoadedModel's choice
        # at its own image size)
        self.net.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.mean = torch.tensor(self.preprocess["mean"], dtype=torch.float32, device=self.device)
        self.std = torch.tensor(self.preprocess["std"], dtype=torch.float32, device=self.device)
        self.opt = _optimizer(plan, self.net, self.device)
        self.loss_fn = _loss_fn(plan) if plan.mode != "detector" else None
        self.multi_train, self.single_train = _targets(plan.train_records, plan.concepts)
        self.multi_eval, self.single_eval = _targets(plan.eval_records, plan.concepts)
        if plan.loss in ("ce", "arcface"):  # unlabelled items cannot be a softmax target
            keep = self.single_train >= 0
            if not keep.all():
                self.cb.log(f"{int((~keep).sum())} unlabelled training images left out (softmax needs a label)")
            self.train_rows = np.flatnonzero(keep)
        else:
            self.train_rows = np.arange(len(plan.train_records))
        if len(self.train_rows) == 0:
            raise UserError(f"dataset {plan.dataset['name']!r}: no labelled training images")
        self.items_per_epoch = int(plan.params.get("num_items_per_epoch") or 0) or len(self.train_rows)
        self.steps_per_epoch = tdata.steps_per_epoch(self.items_per_epoch, self.batch_size)
        self.compiled: nn.Module | None = None  # the compiled forward, once compiling was decided
        self.compile_checked = False  # its first call succeeded (or it was given up)
        self.used_compiled = False  # the last step went through the compiled forward
        self.compiling_step = False  # the last step compiled it (its time is not a step time)
        self.compile_trial: dict | None = None  # auto: the eager steps' median and the compiled steps' times
        self.compile_pending = plan.options["compile"] == "auto" and plan.mode == "images"
        if plan.options["compile"] is True and plan.mode == "images":
            self.start_compiling("options.compile")

    def start_compiling(self, why: str) -> None:
        """Route full training batches through ``torch.compile(net)`` (same parameters; compiled on first call)."""
        self.compile_pending = False
        self.compiled = torch.compile(self.net)
        self.cb.log(f"compiling the network's forward pass ({why}); the next step waits for it")

    def maybe_compile(self, steps_left: int, step_times: list[float], seconds: float | None) -> None:
        """options.compile "auto", after each step (``seconds``: its time, None for the step that compiled): compile
        once the probe steps say over AUTO_COMPILE_MIN_SECONDS are left; then time as many compiled steps and go
        back to eager if they are not faster."""
        if self.compile_trial is not None:
            self._judge_compiled(seconds)
            return
        if not self.compile_pending or len(step_times) < AUTO_COMPILE_PROBE_STEPS:
            return
        self.compile_pending = False
        probe = step_times[1:]  # the first step pays one-off costs
        left = steps_left * sum(probe) / len(probe)
        if left > AUTO_COMPILE_MIN_SECONDS:
            self.compile_trial = {"eager": statistics.median(probe), "compiled": []}
            self.start_compiling(f"auto: about {left / 60:.0f} min of training left")

    def _judge_compiled(self, seconds: float | None) -> None:
        trial = self.compile_trial
        if self.compiled is None:  # compiling failed: nothing to judge
            self.compile_trial = None
            return
        if not self.used_compiled or seconds is None:  # a short last batch ran eagerly, or the step compiled
            return
        trial["compiled"].append(seconds)
        if len(trial["compiled"]) < AUTO_COMPILE_PROBE_STEPS:
            return
        self.compile_trial = None
        eager, compiled = trial["eager"], statistics.median(trial["compiled"])
        if compiled < eager:
            self.cb.log(f"compiled steps take {compiled:.3f} s against {eager:.3f} s eager ({eager / compiled:.2f}x): "
                        "kept")
        else:
            self.compiled = None
            self.cb.log(f"compiled steps take {compiled:.3f} s against {eager:.3f} s eager: not faster here, "
                        "training goes on without compiling")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled forward for full batches once compiling was decided (a short last batch runs eagerly rather
        than compile a second graph); eager otherwise, and for good if compiling fails (no compiler here...)."""
        self.used_compiled = self.compiled is not None and x.shape[0] == self.batch_size
        if not self.used_compiled:
            return self.net(x)
        if self.compile_checked:
            return self.compiled(x)
        self.compiling_step = True
        try:
            out = self.compiled(x)
        except Exception as exc:  # noqa: BLE001 - inductor/dynamo failures come in many types; eager always works
            self.give_up_compiling(exc)
            out = self.net(x)
        self.compile_checked = True
        return out

    def give_up_compiling(self, exc: BaseException) -> None:
        """Compiling failed (the forward's graph, or the backward's, which compiles at the first ``backward()``):
        log why and train eagerly from here on."""
        self.compiled, self.used_compiled = None, False
        self.cb.log(f"compiling failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                    "training goes on without it")

    def prepare_data(self) -> None:
        """Decode once into the pixel cache, or (frozen backbone) compute the backbone features once."""
        plan = self.plan
        size, mode = int(self.preprocess["image_size"]), self.preprocess.get("resize", "short_side_crop")
        if plan.mode == "features":
            self.features = self._features(size, mode)
            return
        records = plan.train_records + plan.eval_records

        def progress(done: int, total: int) -> None:
            self.cb.log(f"caching images: {done}/{total}")

        t0 = time.perf_counter()
        self.cache = tdata.image_cache(plan.dataset, records, size, mode, progress)
        self.train_cache_rows = self.cache.rows([r["item_id"] for r in plan.train_records])
        self.eval_cache_rows = self.cache.rows([r["item_id"] for r in plan.eval_records])
        self.cb.log(f"image cache ready ({len(records)} images at {size} px, {time.perf_counter() - t0:.1f} s)")

    # -------------------------------------------------------------- frozen backbone: features once
    def _features(self, size: int, mode: str) -> dict[str, np.ndarray]:
        plan = self.plan
        records = plan.train_records + plan.eval_records
        need_flip = self.flip_p > 0 or bool(plan.params.get("average_horizontal_flips", False))
        weights = plan.params.get("pretrained_weights", "")
        key = (plan.dataset["id"], plan.dataset["version"], plan.kind, plan.template, weights, size, mode, need_flip,
               plan.base_model["id"] if plan.base_model else None,
               plan.seed if str(weights) in ("None", "random", "") else None,
               "bf16" if self.amp else "fp32",  # features a GPU computed under autocast differ from fp32 ones
               [r["item_id"] for r in records])
        folder = tdata.feature_cache_folder(*key)
        t0 = time.perf_counter()
        feats = tdata.load_or_build_features(folder, len(records), lambda: self._compute_features(records, size, mode,
                                                                                                     need_flip))
        self.cb.log(f"backbone features ready ({len(records)} images, {time.perf_counter() - t0:.1f} s)")
        n_train = len(plan.train_records)
        return {k: v for k, v in feats.items()} | {"n_train": n_train}

    def _compute_features(self, records: list[dict], size: int, mode: str, flip: bool) -> dict[str, np.ndarray]:
        """Backbone features of every record (and of its mirror), decoding on a thread pool while the model runs."""
        net = self.net
        net.eval()
        out: dict[str, list] = {"orig": [], "flip": []} if flip else {"orig": []}
        bs = max(EVAL_BATCH, self.batch_size)
        chunks = [records[i:i + bs] for i in range(0, len(records), bs)]
        done = 0
        t0 = time.perf_counter()

        def decode(chunk: list[dict]) -> np.ndarray:
            return np.stack([tdata._resize(r["path"], size, mode)[0] for r in chunk])

        workers = max(1, (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool, torch.inference_mode():
            pending = [pool.submit(decode, c) for c in chunks[:2]]
            for i in range(len(chunks)):
                u8 = torch.from_numpy(pending[i].result())
                if i + 2 < len(chunks):
                    pending.append(pool.submit(decode, chunks[i + 2]))
                pending[i] = None
                x = to_input(u8, self.mean, self.std, self.device, self.channels_last)
                with self._autocast():
                    out["orig"].append(net.features(x).float().cpu().numpy())
                    if flip:
                        out["flip"].append(net.features(x.flip(3)).float().cpu().numpy())
                done += len(u8)
                if self.cb.should_stop():
                    raise _StopRequested()
                self.cb.on_step({"epoch": 0, "step": i + 1, "steps_per_epoch": len(chunks), "loss": float("nan"),
                                 "lr": 0.0, "images_per_sec": done / max(time.perf_counter() - t0, 1e-9),
                                 "eta_s": (len(records) - done) / max(done / max(time.perf_counter() - t0, 1e-9),
                                                                      1e-9), "phase": "features"})
        return {k: np.concatenate(v) for k, v in out.items()}

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    # -------------------------------------------------------------- one step
    def _lr(self, global_step: int) -> float:
        from core.templates.schedule import lr_at

        return float(lr_at(self.plan.kind, self.plan.template, self.plan.params, global_step, self.steps_per_epoch))

    def _set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)

    def _step_images(self, u8: torch.Tensor, rows: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        x = to_input(u8, self.mean, self.std, self.device, self.channels_last)
        x = tdata.augment(x, gen, self.flip_p, self.flip_dir, CROP_SCALE)
        multi = torch.from_numpy(self.multi_train[rows]).to(self.device, non_blocking=True)
        single = torch.from_numpy(self.single_train[rows]).to(self.device, non_blocking=True)
        with self._autocast():
            out = self.forward(x)
        return self.loss_fn(out, multi, single)

    def _step_features(self, rows: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        f = self.features["orig"][rows]
        if "flip" in self.features and self.flip_p > 0:
            pick = (torch.rand(len(rows), generator=gen) < self.flip_p).numpy()
            f = np.where(pick[:, None], self.features["flip"][rows], f)
        x = torch.from_numpy(np.ascontiguousarray(f)).to(self.device)
        multi = torch.from_numpy(self.multi_train[rows]).to(self.device)
        single = torch.from_numpy(self.single_train[rows]).to(self.device)
        with self._autocast():
            out = self.net.head_from_features(x)
        return self.loss_fn(out, multi, single)

    def _step_detector(self, u8: torch.Tensor, rows: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        images, targets = self._detector_batch(u8, rows, self.plan.train_records, self.train_cache_rows, gen)
        with self._autocast():
            losses = self.net(images, targets)
        return sum(v.float() for v in losses.values())

    def _detector_batch(self, u8, rows, records, cache_rows, gen):
        """Images (each at its own size, 0..1) and torchvision targets; horizontal flips move the boxes too."""
        images, targets = [], []
        flips = (torch.rand(len(rows), generator=gen) < self.flip_p).tolist() if gen is not None else [False] * len(
            rows)
        for k, row in enumerate(rows):
            h, w = (int(v) for v in self.cache.hw[cache_rows[row]])
            img = u8[k, :h, :w].to(self.device).permute(2, 0, 1).float().div_(255.0)
            boxes = _boxes_in_cache(records[row], self.cache.geometry[cache_rows[row]], w, h, self.plan.concepts)
            b = torch.tensor(boxes[0], dtype=torch.float32).reshape(-1, 4)
            if flips[k]:
                img = img.flip(2)
                b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1) if len(b) else b
            images.append(img)
            targets.append({"boxes": b.to(self.device),
                            "labels": torch.tensor(boxes[1], dtype=torch.int64, device=self.device) + _label_offset()})
        return images, targets

    # -------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, epoch: int) -> dict:
        plan = self.plan
        if not plan.eval_records:
            return {}
        test_freq = int(plan.params.get("test_freq", 1) or 1)
        if plan.mode == "detector" and epoch % test_freq != 0 and epoch != self.num_epochs:
            return {}
        self.net.eval()
        try:
            if plan.mode == "detector":
                return self._evaluate_detector()
            outs, embs = self._eval_outputs(plan.eval_records, self.eval_cache_rows if plan.mode == "images" else None,
                                            offset=self.features.get("n_train", 0) if plan.mode == "features" else 0,
                                            want_embeddings=plan.kind == "embedder")
            multi = torch.from_numpy(self.multi_eval)
            single = torch.from_numpy(self.single_eval)
            labelled = multi.sum(1) > 0
            metrics: dict[str, Any] = {}
            if labelled.any():
                o, m, s = outs[labelled], multi[labelled], single[labelled]
                metrics["val_loss"] = float(self.loss_fn(o, m, s))
                k = min(5, o.shape[1])
                top = o.topk(k, dim=1).indices
                hits = m.gather(1, top) > 0
                metrics["top1"] = float(hits[:, 0].float().mean())
                metrics["top5"] = float(hits.any(1).float().mean())
            if plan.kind == "embedder":
                metrics.update(self._retrieval(embs))
            return metrics
        finally:
            self.net.train()

    def _eval_outputs(self, records, cache_rows, offset: int, want_embeddings: bool):
        """Logits (N, C) for records, and their L2-normalised embeddings when asked."""
        outs, embs = [], []
        n = len(records)
        for i in range(0, n, EVAL_BATCH):
            if self.plan.mode == "features":
                f, ff = self._feature_rows(np.arange(offset + i, offset + min(n, i + EVAL_BATCH)))
                with self._autocast():
                    outs.append(self.net.head_from_features(f).float().cpu())
                    if want_embeddings:
                        embs.append(self._embed_from_features(f, ff))
            else:
                rows = cache_rows[i:i + EVAL_BATCH]
                u8 = torch.from_numpy(np.asarray(self.cache.pixels[np.sort(rows)]))[np.argsort(np.argsort(rows))]
                x = to_input(u8, self.mean, self.std, self.device, self.channels_last)
                with self._autocast():
                    outs.append(self.net(x).float().cpu())
                    if want_embeddings:
                        e = F.normalize(self.net.embed(x).float(), dim=1)
                        if self._avg_flips():
                            e = F.normalize(e + F.normalize(self.net.embed(x.flip(3)).float(), dim=1), dim=1)
                        embs.append(e.cpu())
        return torch.cat(outs), (torch.cat(embs) if embs else None)

    def _embed_from_features(self, f: torch.Tensor, f_flip: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings from cached features; with the mirror's features, the normalised mean of both
        (as ``LoadedModel.embed_tensor`` does with average_horizontal_flips)."""
        e = F.normalize(self.net.embed_from_features(f).float(), dim=1)
        if f_flip is not None:
            e = F.normalize(e + F.normalize(self.net.embed_from_features(f_flip).float(), dim=1), dim=1)
        return e.cpu()

    def _avg_flips(self) -> bool:
        return bool(self.plan.params.get("average_horizontal_flips", False))

    def _feature_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = torch.from_numpy(np.ascontiguousarray(self.features["orig"][rows])).to(self.device)
        ff = None
        if self._avg_flips() and "flip" in self.features:
            ff = torch.from_numpy(np.ascontiguousarray(self.features["flip"][rows])).to(self.device)
        return f, ff

    def _retrieval(self, query_emb: torch.Tensor) -> dict:
        from core.evaluation.metrics import embedder_metrics

        plan = self.plan
        gallery_rows = np.arange(len(plan.train_records))
        if len(gallery_rows) > MAX_GALLERY:
            gallery_rows = np.sort(np.random.default_rng(plan.seed).choice(gallery_rows, MAX_GALLERY, replace=False))
        gallery_records = [plan.train_records[i] for i in gallery_rows]
        if plan.mode == "features":
            f, ff = self._feature_rows(gallery_rows)
            with self._autocast():
                gallery = self._embed_from_features(f, ff)
        else:
            _, gallery = self._eval_outputs(gallery_records, self.train_cache_rows[gallery_rows], 0, True)
        q_labels = [r["labels"] for r in plan.eval_records]
        g_labels = [r["labels"] for r in gallery_records]
        keep = [i for i, lab in enumerate(q_labels) if lab]
        if not keep:
            return {}
        m = embedder_metrics(query_emb[keep].numpy(), [q_labels[i] for i in keep], gallery.numpy(), g_labels)
        return {"recall_at_1": m["recall_at_1"], "map": m["map_at_r"]}

    def _evaluate_detector(self) -> dict:
        from core.evaluation.metrics import detector_metrics

        plan = self.plan
        bn = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        losses, preds, truths = [], [], []
        rows_all = np.arange(len(plan.eval_records))
        for i in range(0, len(rows_all), self.batch_size):
            rows = rows_all[i:i + self.batch_size]
            u8 = torch.from_numpy(np.asarray(self.cache.pixels[self.eval_cache_rows[rows]]))
            images, targets = self._detector_batch(u8, rows, plan.eval_records, self.eval_cache_rows, None)
            self.net.train()
            for m in bn:
                m.eval()
            with self._autocast():
                ld = self.net(images, targets)
            losses.append(float(sum(v.float() for v in ld.values())))
            self.net.eval()
            with self._autocast():
                out = self.net(images)
            for o, t in zip(out, targets):
                preds.append({"boxes": o["boxes"].float().cpu().numpy(), "scores": o["scores"].float().cpu().numpy(),
                              "labels": (o["labels"] - _label_offset()).cpu().numpy()})
                truths.append({"boxes": t["boxes"].cpu().numpy(), "labels": (t["labels"] - _label_offset()).cpu()
                               .numpy()})
        m = detector_metrics(preds, truths, plan.concepts)
        return {"val_loss": float(np.mean(losses)), "map": m["map"], "ap50": m["ap50"]}


class _StopRequested(Exception):
    pass


def _label_offset() -> int:
    """torchvision detectors reserve label 0 for the background: concept i is label i + 1."""
    return 1


def _boxes_in_cache(record: dict, geom: np.ndarray, w: int, h: int, concepts: list[str]) -> tuple[list, list]:
    """The record's boxes in cache pixels as x1y1x2y2, clipped to the image; boxes left under a pixel are dropped."""
    index = {c: i for i, c in enumerate(concepts)}
    sx, sy, ox, oy = (float(v) for v in geom)
    out, labels = [], []
    for b in record["boxes"]:
        if b["concept"] not in index:
            continue
        x1 = min(max(b["x"] * sx - ox, 0.0), w)
        y1 = min(max(b["y"] * sy - oy, 0.0), h)
        x2 = min(max((b["x"] + b["w"]) * sx - ox, 0.0), w)
        y2 = min(max((b["y"] + b["h"]) * sy - oy, 0.0), h)
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            out.append([x1, y1, x2, y2])
            labels.append(index[b["concept"]])
    return out, labels


# ------------------------------------------------------------------ the public entry point


def _better(metric: str, new: float | None, old: float | None) -> bool:
    if new is None or (isinstance(new, float) and not math.isfinite(new)):
        return False
    if old is None:
        return True
    return new < old if metric == "val_loss" else new > old


def _selection_metric(plan: Plan) -> str:
    if plan.kind == "embedder":
        return "recall_at_1"
    if plan.kind == "detector":
        return "map"
    return "top1"


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    cols: list[str] = []
    for h in history:
        for k in h:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\r\n")  # no cell a spreadsheet would run (core.csvsafe)
    w.writerow(cols)
    for h in history:
        w.writerow(["" if h.get(k) is None else h.get(k) for k in cols])
    atomic_write_bytes(path, buf.getvalue().encode())


def train(config: dict, run_dir: Path, callbacks: Callbacks | None = None, resume: bool = False) -> TrainResult:
    """Train ``config`` in this process, checkpointing under ``run_dir``; see the module docstring.

    Args:
        config: {"owner", "dataset" (name), "kind", "template", "params" (raw; validated here), "name" (model name,
            optional), "seed", "base_model" (optional: a trained embedder's id/name, or "general"), "run" (the key of
            the per-epoch metrics; default: run_dir's name), "options" ({"early_stopping_patience", "restore_best",
            "compile"}, optional)}.
        run_dir: the run's folder: checkpoints, metrics.csv.
        callbacks: progress, logging and the stop request (``Callbacks`` no-ops when None).
        resume: continue from the last checkpoint in run_dir (a larger num_epochs extends a finished run).

    Returns:
        TrainResult; ``stopped`` True with ``model_id`` None when ``callbacks.should_stop()`` ended the run early.

    Raises:
        UserError: invalid configuration, unknown dataset, no data; TrainingDiverged on a non-finite loss; GPU out of
            memory (the message suggests a smaller batch or image size).
    """
    from core.store import models as mstore

    cb = callbacks or Callbacks()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(config, run_dir)
    s = _Session(plan, run_dir, cb)
    try:
        s.build()
    except torch.OutOfMemoryError as exc:
        raise UserError(f"out of GPU memory placing {plan.template} on the GPU: another process may hold its memory "
                        "(nvidia-smi lists them); try again when it is free") from exc

    state: dict[str, Any] = {"epoch_done": 0, "step_in_epoch": 0, "global_step": 0, "loss_sum": 0.0, "loss_n": 0,
                             "epoch_seconds": 0.0, "epoch_images": 0, "train_seconds": 0.0, "best": None,
                             "bad_epochs": 0, "history": [], "finished": False}
    if resume and read_state(s.ckpt_dir) is not None:
        prev = read_state(s.ckpt_dir)
        before, now_ = prev.get("identity") or {}, json.loads(json.dumps(plan.config_identity()))
        if before.get("dataset_version") != now_["dataset_version"] and before.get("dataset_id") == now_["dataset_id"]:
            raise UserError(f"resume: dataset {plan.dataset['name']!r} changed since this run started (version "
                            f"{before.get('dataset_version')} -> {now_['dataset_version']}); start a new run")
        if before != now_:
            changed = sorted(k for k in now_ if before.get(k) != now_[k])
            raise UserError(f"resume: the configuration differs from the checkpoint's ({', '.join(changed)}; only "
                            "num_epochs may change); start a new run instead")
        state = load_checkpoint(s.ckpt_dir, s.net, s.opt)
        state.pop("file", None)
        state.pop("optimizer", None)
        if int(plan.params["num_epochs"]) < state["epoch_done"]:
            raise UserError(f"num_epochs: {plan.params['num_epochs']} is below the {state['epoch_done']} epochs "
                            "already done; to extend, give a larger num_epochs")
        if state.get("finished") and state.get("model_id") and state["epoch_done"] >= int(plan.params["num_epochs"]):
            try:
                row = mstore.get_model_by_id(state["model_id"])
                cb.log(f"run already finished: model {row['id']} ({row['name']})")
                return TrainResult(row["id"], row["metrics"] or {}, False, state["epoch_done"], row["path"],
                                   state["history"], state["train_seconds"])
            except UserError:
                pass  # its model was deleted: register it again
        state["finished"], state["model_id"] = False, None
        mstore.delete_epoch_metrics(plan.run, after_epoch=state["epoch_done"])
        cb.log(f"resuming after epoch {state['epoch_done']}" + (f", step {state['step_in_epoch']}"
                                                                 if state["step_in_epoch"] else ""))
    else:
        if resume:
            cb.log("resume: no checkpoint yet; starting from the beginning")
        shutil.rmtree(s.ckpt_dir, ignore_errors=True)
        mstore.delete_epoch_metrics(plan.run, after_epoch=0)
    state["identity"] = plan.config_identity()
    state["num_epochs"] = s.num_epochs
    state["model_name"] = plan.name

    numerics = ("bf16 autocast" if s.amp else "fp32") + (", channels_last" if s.channels_last else "")
    cb.on_start({"kind": plan.kind, "template": plan.template, "params": plan.params, "device": str(s.device),
                 "numerics": numerics,
                 "items": len(s.train_rows), "val_items": len(plan.eval_records), "eval_split": plan.eval_split,
                 "steps_per_epoch": s.steps_per_epoch, "epochs": s.num_epochs, "start_epoch": state["epoch_done"] + 1,
                 "mode": plan.mode, "concepts": plan.concepts, "batch_size": s.batch_size})
    try:
        s.prepare_data()  # all cores: decoding, or the backbone's forward passes
        with _cpu_threads(CPU_HEAD_THREADS if plan.mode == "features" and not s.cuda else None):
            stopped = _loop(s, state)
    except _StopRequested:
        stopped = True
    except torch.OutOfMemoryError as exc:
        if s.cuda:
            torch.cuda.empty_cache()
        raise UserError(
            f"out of GPU memory training {plan.template} with batch_size {s.batch_size} at image_size "
            f"{s.preprocess['image_size']}: choose a smaller batch_size or image_size and start a new run; the last "
            f"checkpoint (epoch {state['epoch_done']}) is kept"
        ) from exc
    if stopped:
        cb.log(f"stopped after epoch {state['epoch_done']}, step {state['step_in_epoch']}; checkpoint saved")
        return TrainResult(None, state["history"][-1] if state["history"] else {}, True, state["epoch_done"],
                           history=state["history"], train_seconds=state["train_seconds"])
    return _register(s, state)


@contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def _loop(s: _Session, state: dict) -> bool:
    """Epochs from the checkpoint's position to num_epochs; True when stopped by the callbacks."""
    plan, cb = s.plan, s.cb
    selection = _selection_metric(plan)
    patience = plan.options["early_stopping_patience"]
    s.net.train()
    while state["epoch_done"] < s.num_epochs:
        epoch = state["epoch_done"] + 1
        order = s.train_rows[tdata.epoch_order(len(s.train_rows), s.items_per_epoch, plan.seed, epoch)]
        start = state["step_in_epoch"]
        t_epoch = time.perf_counter()
        if plan.mode == "features":
            source = ((step, rows, None) for step, rows in tdata.batches(order, s.batch_size, start))
        else:
            rows_iter = ((step, s.train_cache_rows[rows]) for step, rows in tdata.batches(order, s.batch_size, start))
            prefetch = tdata.Prefetcher(s.cache.pixels, rows_iter, pin=s.cuda)
            batch_rows = {step: rows for step, rows in tdata.batches(order, s.batch_size, start)}
            source = ((step, batch_rows[step], u8) for step, _, u8 in prefetch)
        step_times: list[float] = []
        try:
            stopped = _epoch_steps(s, state, epoch, source, t_epoch, step_times)
        finally:
            if plan.mode != "features":
                prefetch.close()
        if stopped:
            return True
        train_wall = state["epoch_seconds"] + (time.perf_counter() - t_epoch)  # this epoch's training, all sessions
        metrics = {"train_loss": state["loss_sum"] / max(state["loss_n"], 1)}
        metrics.update(s.evaluate(epoch))
        metrics["lr"] = s._lr(max(state["global_step"] - 1, 0))
        metrics["images_per_sec"] = state["epoch_images"] / max(train_wall, 1e-9)
        metrics["epoch_seconds"] = state["epoch_seconds"] + (time.perf_counter() - t_epoch)
        state["train_seconds"] += time.perf_counter() - t_epoch
        state["history"].append({"epoch": epoch, **metrics})
        state.update(epoch_done=epoch, step_in_epoch=0, loss_sum=0.0, loss_n=0, epoch_images=0, epoch_seconds=0.0)
        value = metrics.get(selection)
        is_best = _better(selection, value, (state["best"] or {}).get("value"))
        if is_best:
            state["best"] = {"epoch": epoch, "metric": selection, "value": value}
            state["bad_epochs"] = 0
        elif value is not None:
            state["bad_epochs"] += 1
        _save(s, state, best=is_best)
        from core.store import models as mstore

        mstore.add_epoch_metrics(plan.run, epoch, metrics)
        cb.on_epoch(epoch, metrics)
        if patience is not None and state["bad_epochs"] >= patience:
            cb.log(f"early stopping: {selection} did not improve for {patience} epochs (best: epoch "
                   f"{state['best']['epoch']})")
            break
    return False


def _epoch_steps(s: _Session, state: dict, epoch: int, source, t_epoch: float, step_times: list[float]) -> bool:
    """The optimiser steps of one epoch (from the checkpoint's step); True when stopped by the callbacks."""
    plan, cb = s.plan, s.cb
    for step, rows, u8 in source:
        if cb.should_stop():
            state["epoch_seconds"] += time.perf_counter() - t_epoch
            state["train_seconds"] += time.perf_counter() - t_epoch
            _save(s, state, best=False)
            return True
        t0 = time.perf_counter()
        seed = tdata.step_seed(plan.seed, epoch, step)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        lr = s._lr(state["global_step"])
        s._set_lr(lr)
        # the step that will compile: keep the batch-norm statistics, to redo it eagerly if its backward fails
        buffers = ({k: b.clone() for k, b in s.net.named_buffers()}
                   if s.compiled is not None and not s.compile_checked else None)
        if plan.mode == "features":
            loss = s._step_features(rows, gen)
        elif plan.mode == "detector":
            loss = s._step_detector(u8, rows, gen)
        else:
            loss = s._step_images(u8, rows, gen)
        s.opt.zero_grad(set_to_none=True)
        try:
            loss.backward()
        except Exception as exc:  # only on the step that compiled: its backward compiles here
            if not s.compiling_step or buffers is None:
                raise
            s.give_up_compiling(exc)
            s.opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for k, b in s.net.named_buffers():
                    b.copy_(buffers[k])
            torch.manual_seed(seed)  # the same step again, eagerly, with the same random draws
            loss = s._step_images(u8, rows, torch.Generator().manual_seed(seed))
            loss.backward()
        s.opt.step()
        # read the loss once the whole step is queued: on a GPU reading it earlier would make the CPU wait for the
        # forward pass before it could queue the backward's kernels. A non-finite loss has then updated the weights
        # in memory, but nothing is saved after it: the run stops and the last good checkpoint stays.
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training stopped at epoch {epoch}, step {step + 1}: the loss became {value} (not a finite "
                f"number) at learning rate {lr:.3g}. Lower the learning rate (per_item_lrate / lrate / "
                f"per_128_lrate) and start a new run; the last good checkpoint (epoch {state['epoch_done']}) "
                "is kept."
            )
        dt = time.perf_counter() - t0
        compiling, s.compiling_step = s.compiling_step, False
        if not compiling:  # a minute of compiling would distort images/s and the ETA for the next 20 steps
            step_times.append(dt)
        state["global_step"] += 1
        state["step_in_epoch"] = step + 1
        state["loss_sum"] += value * len(rows)
        state["loss_n"] += len(rows)
        state["epoch_images"] += len(rows)
        recent = step_times[-20:] or [dt]
        ips = len(rows) / max(sum(recent) / len(recent), 1e-9)
        remaining = (s.num_epochs - epoch) * s.steps_per_epoch + (s.steps_per_epoch - step - 1)
        s.maybe_compile(remaining, step_times, None if compiling else dt)
        cb.on_step({"epoch": epoch, "step": step + 1, "steps_per_epoch": s.steps_per_epoch,
                    "images_per_sec": ips, "loss": value, "lr": lr,
                    "eta_s": remaining * (sum(recent) / len(recent)), "phase": "train"})
    return False


def _save(s: _Session, state: dict, best: bool) -> None:
    frozen = ("backbone.",) if s.plan.mode == "features" and hasattr(s.net, "backbone") else ()
    save_checkpoint(s.ckpt_dir, s.net, s.opt, json.loads(json.dumps(state, default=float)), best=best,
                    frozen_prefixes=frozen)
    _write_metrics_csv(s.run_dir / "metrics.csv", state["history"])


def _register(s: _Session, state: dict) -> TrainResult:
    """Save the final model folder (weights, config, concepts, preprocessing, metrics.csv) and register it."""
    from core.models.io import save_model_dir
    from core.store import models as mstore

    plan = s.plan
    final_epoch = state["epoch_done"]
    if plan.options["restore_best"] and state.get("best") and read_state(s.ckpt_dir, BEST):
        best_state = load_checkpoint(s.ckpt_dir, s.net, None, which=BEST)
        final_epoch = best_state["epoch_done"]
    metrics = dict(next((h for h in state["history"] if h["epoch"] == final_epoch), {}))
    metrics.pop("epoch", None)
    metrics.update(epoch=final_epoch, epochs=state["epoch_done"])
    name = plan.name or mstore.unique_name(plan.owner, f"{plan.template}-{plan.dataset['name']}")
    if mstore.name_taken(plan.owner, name):
        name = mstore.unique_name(plan.owner, name)
    folder = paths.subdir("models") / f"{_slug(plan.owner)}-{_slug(name)}-{time.time_ns()}"
    s.net.eval()
    net = s.net.to(memory_format=torch.contiguous_format).to("cpu")
    meta = {
        "kind": plan.kind, "template": plan.template, "params": plan.params, "concepts": plan.concepts,
        "preprocess": s.preprocess, "dataset_id": plan.dataset["id"], "dataset_version": plan.dataset["version"],
        "dataset": plan.dataset["name"], "metrics": metrics, "seed": plan.seed, "owner": plan.owner, "name": name,
        "base_model": _base_meta(plan), "train_seconds": state["train_seconds"], "run": plan.run,
    }
    if s.base_desc is not None:
        meta["base"] = s.base_desc
    save_model_dir(folder, net, meta)
    shutil.copy(s.run_dir / "metrics.csv", folder / "metrics.csv")
    try:
        model_id = mstore.register_model(
            owner=plan.owner, name=name, kind=plan.kind, template=plan.template, params=plan.params,
            concepts=plan.concepts, preprocess=s.preprocess, path=folder, dataset_id=plan.dataset["id"],
            dataset_version=plan.dataset["version"], metrics=metrics, train_seconds=state["train_seconds"],
            run=plan.run, base_model_id=(plan.base_model["id"] if plan.base_model and plan.base_model["id"] !=
                                         "general" else None),
        )
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    state["finished"] = True
    state["model_id"] = model_id
    update_state(s.ckpt_dir, finished=True, model_id=model_id, model_name=name)
    s.cb.log(f"model {model_id} ({name}) stored in {folder}")
    return TrainResult(model_id, metrics, False, state["epoch_done"], str(folder), state["history"],
                       state["train_seconds"])


def _base_meta(plan: Plan) -> dict | None:
    if plan.base_model is None:
        return None
    return {"id": plan.base_model["id"], "name": plan.base_model.get("name"), "path": plan.base_model.get("path")}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))[:60]
