"""torchvision detection models on cached pixels with boxes; a horizontal flip moves the boxes too. With the backbone
frozen (base_gradient_multiplier 0), the body's maps of every image are computed once and cached, and each step runs
the feature pyramid and head on them (``DetectorFeaturesMode``)."""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from core.models.detectors import StudioRetinaNet, hflip, hflip_target
from core.training import data as tdata
from core.training.modes.base import Batch, OnPixels
from core.training.state import StopRequested

LABEL_OFFSET = 1  # torchvision detectors reserve label 0 for the background: concept i is label i + 1


class DetectorMode(OnPixels):
    name = "detector"
    detector = True
    # at a rate that learns in a few hundred steps one batch's loss can still spike (rate probes at per_128_lrate 1.0
    # saw 26.6 against 1.7): clipping bounds the step such a batch takes
    clip_grad_norm = 10.0

    def step(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        assert batch.pixels is not None  # a pixel mode's batches carry pixels
        images, targets = self._inputs(batch.pixels, batch.rows, self.plan.train_records, self.pixels.train_rows, gen)
        with self.rt.autocast():
            losses = self.net(images, targets)
        return sum(v.float() for v in losses.values())

    def _inputs(self, u8: torch.Tensor, rows: np.ndarray, records: list[dict], cache_rows: np.ndarray,
                gen: torch.Generator | None) -> tuple[list[torch.Tensor], list[dict]]:
        """Images (each at its own size, 0..1) and torchvision targets; horizontal flips move the boxes too."""
        cache, device = self.pixels.cache, self.rt.device
        images, targets = [], []
        flips = (torch.rand(len(rows), generator=gen) < self.flip_p).tolist() if gen is not None else [False] * len(
            rows)
        for k, row in enumerate(rows):
            h, w = (int(v) for v in cache.hw[cache_rows[row]])
            img = u8[k, :h, :w].to(device).permute(2, 0, 1).float().div_(255.0)
            boxes = boxes_in_cache(records[row], cache.geometry[cache_rows[row]], w, h, self.plan.concepts)
            target = {"boxes": torch.tensor(boxes[0], dtype=torch.float32, device=device).reshape(-1, 4),
                      "labels": torch.tensor(boxes[1], dtype=torch.int64, device=device) + LABEL_OFFSET}
            if flips[k]:
                img, target = hflip(img, target)
            images.append(img)
            targets.append(target)
        return images, targets

    @torch.inference_mode()
    def evaluate(self, epoch: int) -> dict:
        """Validation loss (batch norms frozen), mAP and AP50, every test_freq epochs and after the last."""
        if not self.plan.eval_records:
            return {}
        test_freq = int(self.plan.params.get("test_freq", 1) or 1)
        if epoch % test_freq != 0 and epoch != self.num_epochs:
            return {}
        self.net.eval()
        try:
            return self._evaluate()
        finally:
            self.net.train()

    def _evaluate(self) -> dict:
        from core.evaluation.metrics import detector_metrics

        plan, net, cache = self.plan, self.net, self.pixels.cache
        bn = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        losses, preds, truths = [], [], []
        rows_all = np.arange(len(plan.eval_records))
        for i in range(0, len(rows_all), self.batch_size):
            rows = rows_all[i:i + self.batch_size]
            u8 = torch.from_numpy(np.asarray(cache.pixels[self.pixels.eval_rows[rows]]))
            images, targets = self._inputs(u8, rows, plan.eval_records, self.pixels.eval_rows, None)
            net.train()
            for m in bn:
                m.eval()
            with self.rt.autocast():
                ld = net(images, targets)
            losses.append(float(sum(v.float() for v in ld.values())))
            net.eval()
            with self.rt.autocast():
                out = net(images)
            for o, t in zip(out, targets, strict=True):
                preds.append({"boxes": o["boxes"].float().cpu().numpy(), "scores": o["scores"].float().cpu().numpy(),
                              "labels": (o["labels"] - LABEL_OFFSET).cpu().numpy()})
                truths.append({"boxes": t["boxes"].cpu().numpy(), "labels": (t["labels"] - LABEL_OFFSET).cpu()
                               .numpy()})
        scores = detector_metrics(preds, truths, plan.concepts)
        return {"val_loss": float(np.mean(losses)), "map": scores["map"], "ap50": scores["ap50"]}


def boxes_in_cache(record: dict, geom: np.ndarray, w: int, h: int, concepts: list[str]) -> tuple[list, list]:
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


# The body's maps kept for every image (and its mirror) take N x (maps' size) x 4 bytes on disk; above this the run
# trains as the full detector does (the body frozen, but run at every step) rather than fill the disk.
MAX_MAPS_BYTES = 8 << 30
MAP_STRIDES = (8, 16, 32)  # EfficientNet-Lite0's stride 8, 16 and 32 stages: the pyramid's inputs
PAD = 32  # torchvision's GeneralizedRCNNTransform pads a batch to a multiple of 32 (size_divisible)


class DetectorFeaturesMode(DetectorMode):
    """The Lite0 detector with a frozen body: the body's stride 8, 16 and 32 maps of every image, and of its mirror
    when flips are on, are computed once (cached on disk per dataset version, weights and size, as the classifiers'
    features are), and each step runs only the feature pyramid and the RetinaNet head on them; validation reads the
    validation images' maps. The stored model is the whole detector, as any other run's.

    A batch pads its images' maps with zeros to the largest, as torchvision pads the images; for images of one size
    (the scenes sample) a step computes exactly what the full network computes.
    """

    name = "detector_features"
    frozen_backbone = True

    @property
    def retinanet(self) -> StudioRetinaNet:
        assert isinstance(self.net, StudioRetinaNet)  # the one detector with a frozen-body option (Lite0)
        return self.net

    def _widths(self) -> list[int]:
        """The body's channels at strides 8, 16 and 32 (timm's FeatureInfo: 40, 112, 320 for Lite0)."""
        return [int(c) for c in cast("Any", self.retinanet.body()).feature_info.channels()]

    def prepare(self) -> None:
        super().prepare()  # the pixel cache: the maps are computed from it
        plan, cache = self.plan, self.pixels.cache
        self.cache_rows = np.concatenate([self.pixels.train_rows, self.pixels.eval_rows]).astype(np.int64)
        n, n_train = len(self.cache_rows), len(plan.train_records)
        flip = self.flip_p > 0
        # each image as the model resizes it (shorter side image_size, longer capped), padded to a multiple of 32
        sizes = np.array([self._resized(*(int(v) for v in cache.hw[r])) for r in self.cache_rows], dtype=np.int64)
        padded = -(-sizes // PAD) * PAD
        canvas = padded.max(axis=0) if n else np.array([PAD, PAD])
        widths = self._widths()
        per_image = sum(c * (canvas[0] // s) * (canvas[1] // s) for c, s in zip(widths, MAP_STRIDES, strict=True))
        need = int(per_image) * n * (2 if flip else 1) * 4
        self.maps: dict[str, np.ndarray] | None = None
        self.n_train = n_train
        if need > MAX_MAPS_BYTES:
            self.cb.log(f"the backbone's maps of {n} images would take {need / 2**30:.1f} GiB (more than "
                        f"{MAX_MAPS_BYTES / 2**30:.0f}): the frozen backbone runs at every step instead")
            return
        weights = plan.params.get("pretrained_weights", "")
        key = (plan.dataset["id"], plan.dataset["version"], plan.kind, plan.template, weights,
               int(self.preprocess["image_size"]), "detector-maps", flip,
               plan.seed if str(weights) in ("None", "random", "") else None,  # a random body is the seed's
               [r["item_id"] for r in plan.train_records + plan.eval_records])
        t0 = time.perf_counter()
        self.sizes, self.padded = sizes, padded
        self.maps = tdata.load_or_build_features(tdata.feature_cache_folder(*key), n,
                                                 lambda: self._compute(sizes, canvas, n_train, flip))
        self.targets = [self._target(i) for i in range(n)]
        self.cb.log(f"backbone maps ready ({n} images{' and their mirrors' if flip else ''}, "
                    f"{time.perf_counter() - t0:.1f} s)")

    def _resized(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of an h x w image once the model's transform has resized it."""
        t = self.retinanet.transform
        size, max_size = float(t.min_size[-1]), float(t.max_size)
        scale = min(size / min(h, w), max_size / max(h, w))
        return int(math.floor(h * scale)), int(math.floor(w * scale))

    def _image(self, i: int) -> torch.Tensor:
        """Image ``i`` of the run (training records, then validation ones) from the pixel cache, 0..1 (3, h, w)."""
        cache, r = self.pixels.cache, int(self.cache_rows[i])
        h, w = (int(v) for v in cache.hw[r])
        return torch.from_numpy(np.array(cache.pixels[r, :h, :w])).permute(2, 0, 1).float().div_(255.0)

    def _target(self, i: int) -> dict[str, torch.Tensor]:
        """Image ``i``'s boxes in the model's resized pixels, with torchvision's labels."""
        plan, cache = self.plan, self.pixels.cache
        record = plan.train_records[i] if i < self.n_train else plan.eval_records[i - self.n_train]
        r = int(self.cache_rows[i])
        h, w = (int(v) for v in cache.hw[r])
        boxes, labels = boxes_in_cache(record, cache.geometry[r], w, h, plan.concepts)
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        rh, rw = self.sizes[i][0] / h, self.sizes[i][1] / w
        b = b * torch.tensor([rw, rh, rw, rh], dtype=torch.float32)
        return {"boxes": b, "labels": torch.tensor(labels, dtype=torch.int64) + LABEL_OFFSET}

    @torch.inference_mode()
    def _compute(self, sizes: np.ndarray, canvas: np.ndarray, n_train: int, flip: bool) -> dict[str, np.ndarray]:
        """The body's maps of every image (``map0``-``map2``) and of the training images' mirrors (``flip0``-``flip2``,
        zeros for validation images), on a canvas of the largest padded size."""
        net, rt = self.retinanet, self.rt
        body = net.body()
        n = len(sizes)
        widths = self._widths()
        shapes = [(n, c, int(canvas[0]) // s, int(canvas[1]) // s) for c, s in zip(widths, MAP_STRIDES, strict=True)]
        out = {f"map{k}": np.zeros(shape, np.float32) for k, shape in enumerate(shapes)}
        if flip:
            out.update({f"flip{k}": np.zeros(shape, np.float32) for k, shape in enumerate(shapes)})
        body.eval()
        t0, bs = time.perf_counter(), max(8, self.batch_size)
        steps = -(-n // bs)
        try:
            for step, start in enumerate(range(0, n, bs)):
                idx = list(range(start, min(n, start + bs)))
                images = [self._image(i).to(rt.device) for i in idx]
                resized = net.transform(images)[0]
                if [tuple(v) for v in resized.image_sizes] != [tuple(int(v) for v in sizes[i]) for i in idx]:
                    raise RuntimeError(f"the detector resized images to {resized.image_sizes}, not "
                                       f"{sizes[idx].tolist()} as expected")
                batch = resized.tensors
                mirrored = self._mirrored(batch, sizes[idx]) if flip and idx[0] < n_train else None
                for name, x in (("map", batch), ("flip", mirrored)):
                    if x is None:
                        continue
                    for k, f in enumerate(body(x)):
                        s = MAP_STRIDES[k]
                        for j, i in enumerate(idx):
                            if name == "flip" and i >= n_train:
                                continue
                            hp, wp = self.padded[i] // s
                            out[f"{name}{k}"][i, :, :hp, :wp] = f[j, :, :hp, :wp].float().cpu().numpy()
                if self.cb.should_stop():
                    raise StopRequested()
                done = idx[-1] + 1
                rate = done / max(time.perf_counter() - t0, 1e-9)
                self.cb.on_step({"epoch": 0, "step": step + 1, "steps_per_epoch": steps, "loss": float("nan"),
                                 "lr": 0.0, "images_per_sec": rate, "eta_s": (n - done) / max(rate, 1e-9),
                                 "phase": "features"})
        finally:
            self.net.train()
        return out

    @staticmethod
    def _mirrored(batch: torch.Tensor, sizes: np.ndarray) -> torch.Tensor:
        """Each normalised image of a padded batch mirrored within its own width, the padding left where it was."""
        out = torch.zeros_like(batch)
        for j, (h, w) in enumerate(sizes):
            out[j, :, :h, :w] = batch[j, :, :h, :w].flip(-1)
        return out

    def batches(self, order: np.ndarray, start: int) -> Generator[Batch, None, None]:
        if self.maps is None:
            return super().batches(order, start)
        return (Batch(step, rows, None) for step, rows in tdata.batches(order, self.batch_size, start))

    def _gather(self, rows: np.ndarray, mirror: list[bool]) -> tuple[list[torch.Tensor], ImageList]:
        """The maps of these run images (mirrored where asked), cut to the batch's largest padded size, and the
        ImageList torchvision would have made of the images."""
        assert self.maps is not None
        hb, wb = (int(v) for v in self.padded[rows].max(axis=0))
        maps = []
        for k, s in enumerate(MAP_STRIDES):
            parts = [self.maps[f"{'flip' if m else 'map'}{k}"][i, :, :hb // s, :wb // s]
                     for i, m in zip(rows, mirror, strict=True)]
            maps.append(torch.from_numpy(np.stack(parts)).to(self.rt.device))
        images = ImageList(torch.empty((len(rows), 3, hb, wb), device=self.rt.device),
                           [(int(h), int(w)) for h, w in self.sizes[rows]])
        return maps, images

    def step(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        if self.maps is None:
            self.retinanet.body().eval()  # frozen: a random body's batch norms keep their statistics too
            return super().step(batch, gen)
        rows = np.asarray(batch.rows)  # training records' rows: the run's images 0..n_train-1
        mirror = ((torch.rand(len(rows), generator=gen) < self.flip_p).tolist() if "flip0" in self.maps
                  else [False] * len(rows))
        maps, images = self._gather(rows, mirror)
        targets = []
        for i, m in zip(rows, mirror, strict=True):
            t = self.targets[i]
            t = hflip_target(t, int(self.sizes[i][1])) if m else t
            targets.append({k: v.to(self.rt.device) for k, v in t.items()})
        losses = self.retinanet.losses_from_body(maps, images, targets)
        return torch.stack([v.float() for v in losses.values()]).sum()

    def _evaluate(self) -> dict:
        if self.maps is None:
            return super()._evaluate()
        from core.evaluation.metrics import detector_metrics

        plan, net, cache = self.plan, self.retinanet, self.pixels.cache
        losses, preds, truths = [], [], []
        rows_all = np.arange(self.n_train, self.n_train + len(plan.eval_records))
        for i in range(0, len(rows_all), self.batch_size):
            rows = rows_all[i:i + self.batch_size]
            maps, images = self._gather(rows, [False] * len(rows))
            targets = [{k: v.to(self.rt.device) for k, v in self.targets[r].items()} for r in rows]
            ld = net.losses_from_body(maps, images, targets)
            losses.append(float(sum(v.float() for v in ld.values())))
            original = [(int(cache.hw[self.cache_rows[r]][0]), int(cache.hw[self.cache_rows[r]][1])) for r in rows]
            out = net.detect_from_body(maps, images, original)
            for o, r, (h, w) in zip(out, rows, original, strict=True):
                record = plan.eval_records[r - self.n_train]
                boxes, labels = boxes_in_cache(record, cache.geometry[self.cache_rows[r]], w, h, plan.concepts)
                preds.append({"boxes": o["boxes"].float().cpu().numpy(), "scores": o["scores"].float().cpu().numpy(),
                              "labels": (o["labels"] - LABEL_OFFSET).cpu().numpy()})
                truths.append({"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                               "labels": np.asarray(labels, dtype=np.int64)})
        scores = detector_metrics(preds, truths, plan.concepts)
        return {"val_loss": float(np.mean(losses)), "map": scores["map"], "ap50": scores["ap50"]}

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("backbone.body.",)
