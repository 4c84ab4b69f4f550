"""The training data pipeline: every image decoded and resized once into a uint8 cache, sampled and augmented per step.

Decoding JPEGs is what starves a training loop on a small machine, so each image is decoded and resized once per
(dataset version, image size, resize mode) into a ``uint8`` memory-mapped array under ``paths.subdir("cache")``;
every epoch after the first reads raw pixels. Augmentation (flips, random resized crops) happens on the fly on whole
batches with one ``grid_sample``, on the training device. Sampling is a pure function of (seed, epoch), so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core import disk, paths
from core.device import cpu_threads
from core.fsutil import open_write, reporting_disk_full, write_file
from core.models.preprocess import DETECTOR_MAX_SIDE_RATIO, resize_pil
from core.progress import Progress, report_count
from core.records import DatasetRow

CACHE_FORMAT = 1  # bump when the cache layout or the resize changes


def cache_side(size: int, resize: str) -> int:
    """The side of one cached image: ``size``, or for detectors the padded square that holds any aspect ratio."""
    return math.ceil(size * DETECTOR_MAX_SIDE_RATIO) if resize == "detector" else size


@dataclass
class ImageCache:
    """Pixels of a dataset's items at one size: ``pixels[i]`` is item ``item_ids[i]`` as (L, L, 3) uint8.

    ``geometry[i]`` = (scale_x, scale_y, offset_x, offset_y) maps stored-image pixels to cache pixels
    (x' = x * scale_x - offset_x), for detector boxes; ``hw[i]`` is the image's own height and width inside the
    (top-left aligned) padded square, which differs from L only for detectors (aspect ratio kept).
    """

    folder: Path
    item_ids: list[int]
    size: int
    pixels: np.ndarray
    geometry: np.ndarray
    hw: np.ndarray

    def rows(self, item_ids: list[int]) -> np.ndarray:
        pos = {iid: i for i, iid in enumerate(self.item_ids)}
        return np.array([pos[i] for i in item_ids], dtype=np.int64)


def _resize(path: str, size: int, resize: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Decode one stored image and resize it exactly as the model's eval preprocessing does (``resize_pil``)."""
    from PIL import Image

    with Image.open(path) as im:
        return resize_pil(im, size, resize)


def _key(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def image_cache(
    dataset: DatasetRow, records: list[dict], size: int, resize: str, progress: Progress | None = None
) -> ImageCache:
    """The cache of ``records`` (all splits of one dataset version) at ``size``/``resize``, built on first use.

    Built in a temporary folder by a pool of threads (PIL releases the GIL while decoding and resizing), then renamed
    into place, so a killed build leaves no half-written cache behind. Caches share one budget (``core.disk``): this
    one is marked used before it is read, and a new one evicts the least recently used others over the budget.
    """
    item_ids = [int(r["item_id"]) for r in records]
    name = f"images-ds{dataset['id']}-v{dataset['version']}-{resize}-{size}-{_key(CACHE_FORMAT, item_ids)}"
    folder = paths.subdir("cache") / name
    disk.touch(folder)  # used now: the budget evicts others first
    if not (folder / "items.json").is_file():
        _build_image_cache(folder, records, size, resize, progress)
        disk.enforce_cache_budget(keep=folder)
    meta = json.loads((folder / "items.json").read_text())
    side = cache_side(size, resize)
    pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="r", shape=(max(len(item_ids), 1), side, side, 3))
    return ImageCache(folder, meta["item_ids"], size, pixels, np.asarray(meta["geometry"], dtype=np.float64),
                      np.asarray(meta["hw"], dtype=np.int64).reshape(-1, 2))


def _build_image_cache(folder: Path, records: list[dict], size: int, resize: str, progress) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with reporting_disk_full(f"the training cache {folder.name}"):
            _write_image_cache(tmp, folder, records, size, resize, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-built cache stays (a full disk, an error, a cancel)
        raise


def _write_image_cache(tmp: Path, folder: Path, records: list[dict], size: int, resize: str, progress) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(records)
    side = cache_side(size, resize)
    arr = np.memmap(tmp / "pixels.u8", dtype=np.uint8, mode="w+", shape=(max(n, 1), side, side, 3))
    geometry: list = [None] * n
    hw: list = [None] * n
    done = 0

    def work(i: int, out: np.memmap = arr) -> int:  # bound here: ``arr`` is deleted (closed) once all are written
        img, geom = _resize(records[i]["path"], size, resize)
        out[i, : img.shape[0], : img.shape[1]] = img
        geometry[i] = geom
        hw[i] = img.shape[:2]
        return i

    with ThreadPoolExecutor(max_workers=cpu_threads()) as pool:
        for _ in pool.map(work, range(n), chunksize=16):
            done += 1
            if done % 64 == 0 or done == n:
                report_count(progress, done, n, "caching images:")
    arr.flush()
    del arr
    meta = {"item_ids": [int(r["item_id"]) for r in records], "geometry": geometry, "hw": hw, "size": size,
            "mode": resize}
    (tmp / "items.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built the same cache meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def feature_cache_folder(ds_id: int, *key_parts: object) -> Path:
    """Where backbone features for one (dataset id, version, network, weights, size, flips) live; named by the
    dataset so that they go with it (``core.disk.remove_dataset_caches``)."""
    return paths.subdir("cache") / f"features-ds{int(ds_id)}-{_key(CACHE_FORMAT, ds_id, *key_parts)}"


def load_or_build_features(
    folder: Path, n: int, build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``{"orig": (N, F), "flip": (N, F)?}`` float32 arrays from ``folder``, computed by ``build`` on first use."""
    disk.touch(folder)
    if (folder / "done.json").is_file():
        out = {}
        for f in folder.glob("*.npy"):
            out[f.stem] = np.load(f, mmap_mode="r")
        if all(v.shape[0] == n for v in out.values()) and "orig" in out:
            return {k: np.asarray(v) for k, v in out.items()}
    feats = build()
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with reporting_disk_full(f"the training cache {folder.name}"):
            for k, v in feats.items():
                with open_write(tmp / f"{k}.npy") as fh:
                    np.save(fh, np.ascontiguousarray(v, dtype=np.float32))
            write_file(tmp / "done.json", json.dumps({"n": n, "keys": sorted(feats)}).encode(), fsync=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    disk.enforce_cache_budget(keep=folder)
    return feats


# ------------------------------------------------------------------ sampling


def epoch_order(n: int, items_per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    """The row indices (into the training set of size ``n``) that epoch ``epoch`` visits, in order.

    ``items_per_epoch`` 0 means ``n``; more than ``n`` chains fresh permutations. A pure function of its arguments:
    this is the sampler's whole state.
    """
    want = items_per_epoch or n
    rng = np.random.default_rng([int(seed), int(epoch), 7919])
    reps = math.ceil(want / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:want]


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    """Batches per epoch, the last one possibly short (as ``core.templates.schedule.steps_per_epoch``)."""
    return max(1, math.ceil(n_items / batch_size))


def batches(order: np.ndarray, batch_size: int, start_step: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(step, rows) for each batch of the epoch from ``start_step``; the last batch may be short."""
    steps = steps_per_epoch(len(order), batch_size)
    for step in range(start_step, steps):
        rows = order[step * batch_size:(step + 1) * batch_size]
        yield step, rows


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of one training step (augmentation, dropout): resumed runs repeat an uninterrupted run exactly."""
    return int(np.random.default_rng([int(seed), int(epoch), int(step), 104729]).integers(0, 2**62))


class Prefetcher:
    """Gathers the next batch's pixels from the memory map on a background thread (pinned when training on CUDA)."""

    def __init__(self, pixels: np.ndarray, row_batches: Iterator[tuple[int, np.ndarray]], pin: bool) -> None:
        self.pixels = pixels
        self.it = row_batches
        self.pin = pin
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._next = self._submit()

    def _load(self, item):
        step, rows = item
        order = np.argsort(rows, kind="stable")  # read the memmap in file order, put back in batch order
        data = np.empty((len(rows), *self.pixels.shape[1:]), dtype=np.uint8)
        data[order] = self.pixels[rows[order]]
        t = torch.from_numpy(data)
        return step, rows, (t.pin_memory() if self.pin else t)

    def _submit(self):
        try:
            item = next(self.it)
        except StopIteration:
            return None
        return self._pool.submit(self._load, item)

    def __iter__(self):
        return self

    def __next__(self):
        if self._next is None:
            self._pool.shutdown(wait=False)
            raise StopIteration
        out = self._next.result()
        self._next = self._submit()
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ on-the-fly augmentation


def augment(x: torch.Tensor, gen: torch.Generator, flip_probability: float, flip_direction: str,
            crop_scale: tuple[float, float] | None) -> torch.Tensor:
    """Random flips (and random resized crops when ``crop_scale``) for a whole batch, with one affine resample.

    ``flip_direction``: "horizontal", "vertical" or "both" (each axis flipped with ``flip_probability``).
    ``crop_scale``: the range of the crop's area as a fraction of the image (aspect ratio in [3/4, 4/3]).
    """
    b = x.shape[0]
    if flip_probability <= 0 and crop_scale is None:
        return x
    u = torch.rand(b, 6, generator=gen)
    fx = torch.ones(b)
    fy = torch.ones(b)
    if flip_direction in ("horizontal", "both"):
        fx = torch.where(u[:, 0] < flip_probability, -1.0, 1.0)
    if flip_direction in ("vertical", "both"):
        fy = torch.where(u[:, 1] < flip_probability, -1.0, 1.0)
    sx = torch.ones(b)
    sy = torch.ones(b)
    tx = torch.zeros(b)
    ty = torch.zeros(b)
    if crop_scale is not None:
        area = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[:, 2]
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 3]
        ratio = torch.exp(log_r)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (1 - sx) * (2 * u[:, 4] - 1)
        ty = (1 - sy) * (2 * u[:, 5] - 1)
    if crop_scale is None:  # flips only: exact, no resampling
        out = x
        hmask = fx < 0
        vmask = fy < 0
        if hmask.any():
            out = out.clone()
            out[hmask.to(x.device)] = out[hmask.to(x.device)].flip(3)
        if vmask.any():
            out = out.clone() if out is x else out
            out[vmask.to(x.device)] = out[vmask.to(x.device)].flip(2)
        return out
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sx * fx
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy * fy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else out
