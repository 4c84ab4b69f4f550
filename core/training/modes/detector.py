"""torchvision detection models on cached pixels with boxes; a horizontal flip moves the boxes too."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.models.detectors import hflip
from core.training.modes.base import Batch, OnPixels

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
