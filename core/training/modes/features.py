"""A frozen backbone: its features are computed once per (dataset version, weights, image size, flips) and cached on
disk, and only the head trains, in seconds (base_gradient_multiplier 0, or a transfer classifier on a base model)."""

from __future__ import annotations

import time
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from core.device import cpu_threads
from core.training import data as tdata
from core.training.modes.base import EVAL_BATCH, Batch, Classifying
from core.training.state import StopRequested

# Frozen backbone on the CPU: the head's steps are tiny matmuls where a second OpenMP thread only adds a barrier per
# op, and a barrier that collapses when anything else wants a core (measured here: 2 threads 335 images/s, 1 thread
# 4,500, with another process busy; see bench/README.md, background jobs).
CPU_HEAD_THREADS = 1


class FeaturesMode(Classifying):
    name = "features"
    frozen_backbone = True

    def prepare(self) -> None:
        plan = self.plan
        size, resize = int(self.preprocess["image_size"]), self.preprocess.get("resize", "short_side_crop")
        records = plan.train_records + plan.eval_records
        need_flip = self.flip_p > 0 or self.avg_flips()
        weights = plan.params.get("pretrained_weights", "")
        key = (plan.dataset["id"], plan.dataset["version"], plan.kind, plan.template, weights, size, resize,
               need_flip, plan.base_model["id"] if plan.base_model else None,
               plan.seed if str(weights) in ("None", "random", "") else None,
               "bf16" if self.rt.amp else "fp32",  # features a GPU computed under autocast differ from fp32 ones
               [r["item_id"] for r in records])
        folder = tdata.feature_cache_folder(*key)
        t0 = time.perf_counter()
        self.features = tdata.load_or_build_features(
            folder, len(records), lambda: self._compute(records, size, resize, need_flip))
        self.cb.log(f"backbone features ready ({len(records)} images, {time.perf_counter() - t0:.1f} s)")
        self.n_train = len(plan.train_records)  # the validation records' features follow the training ones

    def _compute(self, records: list[dict], size: int, resize: str, flip: bool) -> dict[str, np.ndarray]:
        """Backbone features of every record (and of its mirror), decoding on a thread pool while the model runs."""
        net = self.net
        net.eval()
        out: dict[str, list] = {"orig": [], "flip": []} if flip else {"orig": []}
        bs = max(EVAL_BATCH, self.batch_size)
        chunks = [records[i:i + bs] for i in range(0, len(records), bs)]
        done = 0
        t0 = time.perf_counter()

        def decode(chunk: list[dict]) -> np.ndarray:
            return np.stack([tdata._resize(r["path"], size, resize)[0] for r in chunk])

        workers = cpu_threads()  # all cores, or worker_threads in a job worker
        with ThreadPoolExecutor(max_workers=workers) as pool, torch.inference_mode():
            pending: list[Future | None] = [pool.submit(decode, c) for c in chunks[:2]]
            for i in range(len(chunks)):
                future = pending[i]
                assert future is not None  # each is read once, then dropped
                u8 = torch.from_numpy(future.result())
                if i + 2 < len(chunks):
                    pending.append(pool.submit(decode, chunks[i + 2]))
                pending[i] = None
                x = self.rt.input(u8)
                with self.rt.autocast():
                    out["orig"].append(net.features(x).float().cpu().numpy())
                    if flip:
                        out["flip"].append(net.features(x.flip(3)).float().cpu().numpy())
                done += len(u8)
                if self.cb.should_stop():
                    raise StopRequested()
                rate = done / max(time.perf_counter() - t0, 1e-9)
                self.cb.on_step({"epoch": 0, "step": i + 1, "steps_per_epoch": len(chunks), "loss": float("nan"),
                                 "lr": 0.0, "images_per_sec": rate, "eta_s": (len(records) - done) / max(rate, 1e-9),
                                 "phase": "features"})
        return {k: np.concatenate(v) for k, v in out.items()}

    def batches(self, order: np.ndarray, start: int) -> Generator[Batch, None, None]:
        return (Batch(step, rows, None) for step, rows in tdata.batches(order, self.batch_size, start))

    def step(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        rows = batch.rows
        f = self.features["orig"][rows]
        if "flip" in self.features and self.flip_p > 0:
            pick = (torch.rand(len(rows), generator=gen) < self.flip_p).numpy()
            f = np.where(pick[:, None], self.features["flip"][rows], f)
        x = self.rt.tensor(np.ascontiguousarray(f))
        multi = self.rt.tensor(self.multi_train[rows])
        single = self.rt.tensor(self.single_train[rows])
        with self.rt.autocast():
            out = self.net.head_from_features(x)
        return self.loss_fn(out, multi, single)

    def train_threads(self) -> int | None:
        return None if self.rt.cuda else CPU_HEAD_THREADS

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("backbone.",) if hasattr(self.net, "backbone") else ()

    def eval_outputs(self, want_embeddings: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs, embs = [], []
        n = len(self.plan.eval_records)
        for i in range(0, n, EVAL_BATCH):
            f, ff = self._feature_rows(np.arange(self.n_train + i, self.n_train + min(n, i + EVAL_BATCH)))
            with self.rt.autocast():
                outs.append(self.net.head_from_features(f).float().cpu())
                if want_embeddings:
                    embs.append(self._embed(f, ff))
        return torch.cat(outs), (torch.cat(embs) if embs else None)

    def gallery_embeddings(self, rows: np.ndarray) -> torch.Tensor:
        f, ff = self._feature_rows(rows)
        with self.rt.autocast():
            return self._embed(f, ff)

    def _feature_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.rt.tensor(np.ascontiguousarray(self.features["orig"][rows]))
        ff = None
        if self.avg_flips() and "flip" in self.features:
            ff = self.rt.tensor(np.ascontiguousarray(self.features["flip"][rows]))
        return f, ff

    def _embed(self, f: torch.Tensor, f_flip: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised embeddings from cached features; with the mirror's features, the normalised mean of both
        (as ``LoadedModel.embed_tensor`` does with average_horizontal_flips)."""
        e = F.normalize(self.net.embed_from_features(f).float(), dim=1)
        if f_flip is not None:
            e = F.normalize(e + F.normalize(self.net.embed_from_features(f_flip).float(), dim=1), dim=1)
        return e.cpu()
