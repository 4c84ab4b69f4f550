"""Sample data for a first run: Fashion-MNIST (Debian package dataset-fashion-mnist) and scikit-learn's digits."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.data import staging
from core.data.importer import import_dataset
from core.errors import UserError
from core.progress import Progress
from core.users import User

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle_boot")  # "T-shirt/top" and "Ankle boot" in the paper; a slash cannot name a folder
DIGITS_SCALE = 4  # 8x8 digits stored at 32x32 (nearest neighbour: the same pixels, visible in the grid)


def fashion_mnist_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def _idx(path: Path) -> np.ndarray:
    """Read an idx-ubyte.gz file (the MNIST format) into an array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _pick(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of each class, drawn with a seed, in file order."""
    rng = np.random.default_rng(seed)
    chosen = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def _write(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
           scale: int = 1) -> None:
    for i, (img, lab) in enumerate(zip(images, labels)):
        d = folder / split / names[int(lab)]
        d.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img, "L")
        if scale > 1:
            pil = pil.resize((img.shape[1] * scale, img.shape[0] * scale), Image.Resampling.NEAREST)
        pil.save(d / f"{split}_{i:05d}.png", compress_level=1)


def _import_generated(user: User | str, fill: Callable[[Path], None], name: str, val_fraction: float, seed: int,
                      progress: Progress | None, source_label: str) -> dict[str, Any]:
    area = staging.create(prefix="samples-")  # removed by the start-up check if this process dies
    try:
        fill(area / "images")
        report = import_dataset(user, area / "images", name, "folder", val_fraction, seed, progress,
                                source_label=source_label)
    finally:
        staging.remove(area)
    return report


def import_fashion_mnist(user: User | str, name: str = "fashion-mnist", per_class: int = 100,
                         test_per_class: int | None = None, val_fraction: float = 0.2, seed: int = 0,
                         progress: Progress | None = None) -> dict[str, Any]:
    """Import ``per_class`` training and ``test_per_class`` test images per class (default: a sixth, as 60k/10k).

    The training images are split stratified into train/val with ``val_fraction``; the test images keep "test".
    """
    if not fashion_mnist_available():
        raise UserError(f"Fashion-MNIST is not installed: expected {FASHION_DIR}; install the Debian package "
                        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    if not 1 <= per_class <= 6000:
        raise UserError(f"per_class {per_class} is outside 1 to 6,000 (Fashion-MNIST has 6,000 training images "
                        "per class)")
    test_per_class = max(1, per_class // 6) if test_per_class is None else test_per_class
    if not 0 <= test_per_class <= 1000:
        raise UserError(f"test_per_class {test_per_class} is outside 0 to 1,000")

    def fill(folder: Path) -> None:
        from core.data.split import stratified_split

        x = _idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
        y = _idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
        idx = _pick(y, per_class, seed)
        splits = stratified_split([str(i) for i in idx], [[str(y[i])] for i in idx], val_fraction, seed)
        for split in ("train", "val"):
            sel = np.array([i for i, s in zip(idx, splits) if s == split], dtype=np.int64)
            if len(sel):
                _write(folder, split, x[sel], y[sel], FASHION_CLASSES)
        if test_per_class:
            xt = _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
            yt = _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
            tidx = _pick(yt, test_per_class, seed)
            _write(folder, "test", xt[tidx], yt[tidx], FASHION_CLASSES)

    return _import_generated(user, fill, name, val_fraction, seed, progress,
                             f"Fashion-MNIST ({per_class} per class)")


def import_digits(user: User | str, name: str = "digits", val_fraction: float = 0.2, seed: int = 0,
                  progress: Progress | None = None) -> dict[str, Any]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), stored at 32x32, split 80/20 stratified."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    names = tuple(str(i) for i in range(10))

    def fill(folder: Path) -> None:
        for i, (img, lab) in enumerate(zip(images, digits.target)):
            d = folder / names[int(lab)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").resize((8 * DIGITS_SCALE, 8 * DIGITS_SCALE), Image.Resampling.NEAREST) \
                .save(d / f"{i:04d}.png")

    return _import_generated(user, fill, name, val_fraction, seed, progress, "scikit-learn digits")
