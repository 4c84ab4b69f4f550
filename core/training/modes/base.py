"""The face every way of training has (``Mode``), the pixel cache that images and detectors read, and the evaluation
shared by classifiers and embedders (top-1/top-5, validation loss, retrieval against a training gallery)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from core.models.networks import StudioNet
from core.training import data as tdata
from core.training.callbacks import Callbacks
from core.training.losses import SOFTMAX_LOSSES, loss_fn, targets
from core.training.plan import Plan
from core.training.runtime import Runtime

MAX_GALLERY = 5000  # embedders: at most this many training items as the retrieval gallery during validation
EVAL_BATCH = 64


class Batch(NamedTuple):
    """One optimiser step's data: its index in the epoch, the training records' rows, and their cached pixels
    (None when the mode trains on cached features)."""

    step: int
    rows: np.ndarray
    pixels: torch.Tensor | None


class Mode:
    """One way through the data. ``prepare`` caches what every epoch reads, ``batches`` yields an epoch's steps from
    the checkpoint's position, ``step`` computes one batch's loss, ``evaluate`` gives an epoch's validation metrics.

    Class flags say what the rest of the run needs to know: ``detector`` (fp32, images of varying shapes),
    ``compiles`` (the step runs the whole network, so compiling its forward can pay), ``frozen_backbone`` (only the
    head trains).
    """

    name: ClassVar[str]
    detector: ClassVar[bool] = False
    clip_grad_norm: ClassVar[float | None] = None  # gradients rescaled to at most this L2 norm before each step
    compiles: ClassVar[bool] = False
    frozen_backbone: ClassVar[bool] = False

    def __init__(self, plan: Plan, net: nn.Module, rt: Runtime, preprocess: dict, cb: Callbacks,
                 forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.plan, self.net, self.rt, self.preprocess, self.cb = plan, net, rt, preprocess, cb
        # training forward passes: the compile policy's, for modes that compile
        self.forward = forward if forward is not None else net
        self.batch_size = int(plan.params["batch_size"])
        self.num_epochs = int(plan.params["num_epochs"])
        self.flip_p, self.flip_dir = plan.flips
        self.multi_train, self.single_train = targets(plan.train_records, plan.concepts)
        self.multi_eval, self.single_eval = targets(plan.eval_records, plan.concepts)
        if plan.loss in SOFTMAX_LOSSES:  # unlabelled items cannot be a softmax target
            keep = self.single_train >= 0
            if not keep.all():
                cb.log(f"{int((~keep).sum())} unlabelled training images left out (softmax needs a label)")
            self.train_rows = np.flatnonzero(keep)
        else:
            self.train_rows = np.arange(len(plan.train_records))
        if len(self.train_rows) == 0:
            raise UserError(f"dataset {plan.dataset['name']!r}: no labelled training images")

    def prepare(self) -> None:
        raise NotImplementedError

    def batches(self, order: np.ndarray, start: int) -> Generator[Batch, None, None]:
        raise NotImplementedError

    def step(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, epoch: int) -> dict:
        raise NotImplementedError

    def train_threads(self) -> int | None:
        """torch's intra-op thread count while the steps run (None: unchanged, every core)."""
        return None

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes left out of checkpoints (a frozen part, rebuilt identically on resume)."""
        return ()

    def avg_flips(self) -> bool:
        return bool(self.plan.params.get("average_horizontal_flips", False))


class PixelCache:
    """Every record of the run decoded and resized once (``core.training.data.image_cache``); training batches are
    gathered from it on a background thread."""

    def __init__(self, plan: Plan, preprocess: dict, cb: Callbacks) -> None:
        self.plan, self.preprocess, self.cb = plan, preprocess, cb

    def prepare(self) -> None:
        plan = self.plan
        size, resize = int(self.preprocess["image_size"]), self.preprocess.get("resize", "short_side_crop")
        records = plan.train_records + plan.eval_records
        t0 = time.perf_counter()
        self.cache = tdata.image_cache(plan.dataset, records, size, resize, lambda _, message: self.cb.log(message))
        self.train_rows = self.cache.rows([r["item_id"] for r in plan.train_records])
        self.eval_rows = self.cache.rows([r["item_id"] for r in plan.eval_records])
        self.cb.log(f"image cache ready ({len(records)} images at {size} px, {time.perf_counter() - t0:.1f} s)")

    def batches(self, order: np.ndarray, batch_size: int, start: int, pin: bool) -> Generator[Batch, None, None]:
        """The epoch's batches from step ``start``, pixels read one batch ahead; close the iterator to stop it."""
        rows_iter = ((step, self.train_rows[rows]) for step, rows in tdata.batches(order, batch_size, start))
        prefetch = tdata.Prefetcher(self.cache.pixels, rows_iter, pin=pin)
        batch_rows = {step: rows for step, rows in tdata.batches(order, batch_size, start)}
        try:
            for step, _, u8 in prefetch:
                yield Batch(step, batch_rows[step], u8)
        finally:
            prefetch.close()


class OnPixels(Mode):
    """A mode that trains on cached pixels (images, detector): its data is a ``PixelCache``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pixels = PixelCache(self.plan, self.preprocess, self.cb)

    def prepare(self) -> None:
        self.pixels.prepare()

    def batches(self, order: np.ndarray, start: int) -> Generator[Batch, None, None]:
        return self.pixels.batches(order, self.batch_size, start, pin=self.rt.cuda)


class Classifying(Mode):
    """Validation of classifiers and embedders: loss, top-1/top-5 on labelled items, and for embedders recall@1 and
    mAP of the validation items against (up to MAX_GALLERY) training items. Subclasses give the outputs."""

    net: StudioNet  # backbone -> neck (the embedding) -> classifier

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn(self.plan.loss, self.plan.params)

    def eval_outputs(self, want_embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (N, C) of the validation records, and their L2-normalised embeddings when asked."""
        raise NotImplementedError

    def gallery_embeddings(self, rows: np.ndarray) -> torch.Tensor:
        """L2-normalised embeddings of these training records (on the CPU)."""
        raise NotImplementedError

    @torch.inference_mode()
    def evaluate(self, epoch: int) -> dict:
        plan = self.plan
        if not plan.eval_records:
            return {}
        self.net.eval()
        try:
            outs, embs = self.eval_outputs(want_embeddings=plan.kind == "embedder")
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
            if plan.kind == "embedder" and embs is not None:
                metrics.update(self._retrieval(embs))
            return metrics
        finally:
            self.net.train()

    def _retrieval(self, query_emb: torch.Tensor) -> dict:
        from core.evaluation.metrics import embedder_metrics

        plan = self.plan
        gallery_rows = np.arange(len(plan.train_records))
        if len(gallery_rows) > MAX_GALLERY:
            gallery_rows = np.sort(np.random.default_rng(plan.seed).choice(gallery_rows, MAX_GALLERY, replace=False))
        gallery_records = [plan.train_records[i] for i in gallery_rows]
        gallery = self.gallery_embeddings(gallery_rows)
        q_labels = [r["labels"] for r in plan.eval_records]
        g_labels = [r["labels"] for r in gallery_records]
        keep = [i for i, lab in enumerate(q_labels) if lab]
        if not keep:
            return {}
        m = embedder_metrics(query_emb[keep].numpy(), [q_labels[i] for i in keep], gallery.numpy(), g_labels)
        return {"recall_at_1": m["recall_at_1"], "map": m["map_at_r"]}
