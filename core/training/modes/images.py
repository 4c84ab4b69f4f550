"""The full network on cached pixels, augmented on the fly (random resized crops and flips) on the training device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.training import data as tdata
from core.training.modes.base import EVAL_BATCH, Batch, Classifying, OnPixels

CROP_SCALE = (0.35, 1.0)  # random resized crops on the fly (area range), as core.models.preprocess's training transform


class ImagesMode(OnPixels, Classifying):
    name = "images"
    compiles = True

    def step(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        assert batch.pixels is not None  # a pixel mode's batches carry pixels
        x = tdata.augment(self.rt.input(batch.pixels), gen, self.flip_p, self.flip_dir, CROP_SCALE)
        multi = self.rt.tensor(self.multi_train[batch.rows], non_blocking=True)
        single = self.rt.tensor(self.single_train[batch.rows], non_blocking=True)
        with self.rt.autocast():
            out = self.forward(x)
        return self.loss_fn(out, multi, single)

    def eval_outputs(self, want_embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._outputs(self.pixels.eval_rows, want_embeddings)

    def gallery_embeddings(self, rows: np.ndarray) -> torch.Tensor:
        _, embeddings = self._outputs(self.pixels.train_rows[rows], True)
        assert embeddings is not None
        return embeddings

    def _outputs(self, cache_rows: np.ndarray, want_embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (N, C) of these cached images, and their L2-normalised embeddings (averaged with the mirror's when
        the template's average_horizontal_flips is on, as ``LoadedModel.embed_tensor``) when asked."""
        net, pixels = self.net, self.pixels.cache.pixels
        outs, embs = [], []
        for i in range(0, len(cache_rows), EVAL_BATCH):
            rows = cache_rows[i:i + EVAL_BATCH]
            u8 = torch.from_numpy(np.asarray(pixels[np.sort(rows)]))[np.argsort(np.argsort(rows))]
            x = self.rt.input(u8)
            with self.rt.autocast():
                outs.append(net(x).float().cpu())
                if want_embeddings:
                    e = F.normalize(net.embed(x).float(), dim=1)
                    if self.avg_flips():
                        e = F.normalize(e + F.normalize(net.embed(x.flip(3)).float(), dim=1), dim=1)
                    embs.append(e.cpu())
        return torch.cat(outs), (torch.cat(embs) if embs else None)
