"""Detection scenes from real photos: Caltech-101 objects pasted onto Caltech-101's real backgrounds
(BACKGROUND_Google), several per scene at random positions and scales, some overlapping, written as COCO with
exact boxes.

No detection dataset ships with the studio, and a box over the middle of a Caltech photo tests localisation hardly at
all; these scenes do: objects anywhere, of any size from small to large, partly hidden behind one another. A box is
the bounding box of the object's pixels still visible in the scene (a later object may cover up to MAX_COVERED of an
earlier one, never more, so every object stays findable). Object photos and backgrounds are split before composing:
a validation scene never shows a photo or a background that a training scene shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core import paths
from core.data import staging
from core.errors import UserError
from core.progress import Progress
from core.users import User

BACKGROUNDS = "BACKGROUND_Google"
DUPLICATES = ("Faces",)  # the same photos as Faces_easy, less tightly cropped: one of the two is enough
SCENE_SIDE = 320  # pixels: scenes are square, the size the CPU benchmark trains at
DEFAULT_COUNT = 200  # a quick try on a CPU
MAX_COUNT = 20_000
DEFAULT_CONCEPTS = 5
OBJECTS_PER_SCENE = (1, 4)  # fewest and most objects pasted into one scene
OBJECT_SIDE = (0.18, 0.55)  # an object's longer side as a share of the scene's side: small to large COCO boxes
MAX_COVERED = 0.35  # most of an earlier object's area a later one may hide
MIN_VISIBLE_SIDE = 8  # pixels: an object whose visible box is narrower is not placed there
PLACEMENT_TRIES = 30


def caltech_root() -> Path:
    return paths.caltech101_dir() / "101_ObjectCategories"


def scenes_available() -> bool:
    """Caltech-101 with its backgrounds is where the studio looks for it (shared/datasets/caltech101)."""
    return (caltech_root() / BACKGROUNDS).is_dir()


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def default_concepts(k: int, root: Path | None = None) -> list[str]:
    """The ``k`` Caltech-101 categories with the most photos (ties by name), backgrounds and duplicates left out."""
    root = root or caltech_root()
    counts = {p.name: len(_photos(p)) for p in root.iterdir() if p.is_dir() and p.name not in (BACKGROUNDS,
                                                                                                 *DUPLICATES)}
    if not 1 <= k <= len(counts):
        raise UserError(f"concepts must be from 1 to {len(counts)} (Caltech-101's categories), got {k}")
    return sorted(counts, key=lambda n: (-counts[n], n))[:k]


def _split(files: list[Path], val_fraction: float, rng: np.random.Generator) -> tuple[list[Path], list[Path]]:
    """(train, val) halves of ``files``, shuffled; each non-empty when there are two files or more."""
    order = [files[i] for i in rng.permutation(len(files))]
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1) if len(order) > 1 else 0
    return order[n_val:] or order, order[:n_val] or order


def _background(path: Path, side: int, rng: np.random.Generator) -> Image.Image:
    """A random square crop of the background photo, resized to ``side``."""
    with Image.open(path) as src:
        im = src.convert("RGB")
    s = min(im.size)
    x, y = int(rng.integers(0, im.width - s + 1)), int(rng.integers(0, im.height - s + 1))
    return im.crop((x, y, x + s, y + s)).resize((side, side), Image.Resampling.BILINEAR)


def _object(path: Path, side: int, rng: np.random.Generator) -> Image.Image:
    """The object photo scaled so its longer side is a random share (OBJECT_SIDE) of the scene, mirrored half the
    time."""
    with Image.open(path) as src:
        im = src.convert("RGB")
    longer = rng.uniform(*OBJECT_SIDE) * side
    scale = longer / max(im.size)
    im = im.resize((max(MIN_VISIBLE_SIDE, round(im.width * scale)), max(MIN_VISIBLE_SIDE, round(im.height * scale))),
                   Image.Resampling.BILINEAR)
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else im


def _place(owner: np.ndarray, areas: list[int], w: int, h: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """A top-left corner where a ``w`` x ``h`` object leaves every earlier object at least 1 - MAX_COVERED of its
    area visible (``owner``: which object each pixel shows, -1 for background); None after PLACEMENT_TRIES."""
    side = owner.shape[0]
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(0, side - w + 1)), int(rng.integers(0, side - h + 1))
        hidden = np.bincount(owner[y:y + h, x:x + w].ravel() + 1, minlength=len(areas) + 1)[1:]
        visible = np.bincount(owner.ravel() + 1, minlength=len(areas) + 1)[1:] - hidden
        if all(v >= (1 - MAX_COVERED) * a for v, a in zip(visible.tolist(), areas)):
            return x, y
    return None


def compose(folder: Path, count: int = DEFAULT_COUNT, concepts: int | list[str] = DEFAULT_CONCEPTS, seed: int = 0,
            val_fraction: float = 0.2, side: int = SCENE_SIDE, root: Path | None = None,
            progress: Callable[[int], None] | None = None) -> Path:
    """Write ``count`` scenes (JPEG) and their COCO file ``scenes.json`` into ``folder``; returns the COCO file.

    Args:
        concepts: how many categories (the largest, :func:`default_concepts`) or their names.
        val_fraction: the share of scenes marked ``"split": "val"`` (the COCO image's split), composed from the
            photos and backgrounds held out for validation.
        progress: called with the number of scenes written so far.
    """
    root = root or caltech_root()
    names = default_concepts(concepts, root) if isinstance(concepts, int) else list(concepts)
    rng = np.random.default_rng(seed)
    pools = {n: _split(_photos(root / n), val_fraction, rng) for n in names}
    backgrounds = _split(_photos(root / BACKGROUNDS), val_fraction, rng)
    n_val = round(count * val_fraction)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        part = 1 if i < n_val else 0  # val scenes first: the same seed gives the same val scenes at any count
        scene = _background(backgrounds[part][int(rng.integers(len(backgrounds[part])))], side, rng)
        owner = np.full((side, side), -1, dtype=np.int64)
        placed: list[str] = []
        areas: list[int] = []
        for _ in range(int(rng.integers(OBJECTS_PER_SCENE[0], OBJECTS_PER_SCENE[1] + 1))):
            concept = names[int(rng.integers(len(names)))]
            pool = pools[concept][part]
            obj = _object(pool[int(rng.integers(len(pool)))], side, rng)
            at = _place(owner, areas, obj.width, obj.height, rng)
            if at is None:
                continue
            x, y = at
            scene.paste(obj, (x, y))
            owner[y:y + obj.height, x:x + obj.width] = len(placed)
            placed.append(concept)
            areas.append(obj.width * obj.height)
        file_name = f"scene_{i:05d}.jpg"
        scene.save(images_dir / file_name, quality=92, subsampling=0)  # full-resolution colour for small objects
        images.append({"id": i, "file_name": f"images/{file_name}", "width": side, "height": side,
                       "split": "val" if part else "train"})
        for j, concept in enumerate(placed):
            ys, xs = np.nonzero(owner == j)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({"id": len(annotations), "image_id": i, "category_id": names.index(concept) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int((owner == j).sum()), "iscrowd": 0})
        if progress:
            progress(i + 1)
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    out = folder / "scenes.json"
    out.write_text(json.dumps(coco))
    return out


def check_scene_args(count: Any, concepts: Any, seed: Any) -> tuple[int, int, int]:
    """count (1 to MAX_COUNT), concepts (1 up) and seed (0 up) as whole numbers; UserError naming the field."""
    out = []
    for field, value, low, high in (("count", count, 1, MAX_COUNT), ("concepts", concepts, 1, 101),
                                    ("seed", seed, 0, 2**32 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserError(f"{field} must be a whole number from {low:,} to {high:,}, got {value!r}")
        out.append(value)
    return out[0], out[1], out[2]


def import_scenes(user: User | str, name: str = "scenes", count: int = DEFAULT_COUNT,
                  concepts: int = DEFAULT_CONCEPTS, seed: int = 0, val_fraction: float = 0.2,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Compose ``count`` scenes of the ``concepts`` largest Caltech-101 categories and import them as ``user``'s
    detection dataset ``name`` (COCO, the scenes' own train/val split)."""
    from core.data.importer import import_dataset

    count, concepts, seed = check_scene_args(count, concepts, seed)
    if not 0.0 < float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be above 0 and below 1, got {val_fraction!r}")
    if not scenes_available():
        raise UserError(f"Caltech-101 is not where the scenes are composed from: expected {caltech_root()} with its "
                        f"{BACKGROUNDS} folder")
    area = staging.create(prefix="scenes-")  # removed by the start-up check if this process dies
    try:
        def composed(n: int) -> None:
            if progress and (n % 20 == 0 or n == count):
                progress(0.3 * n / count, f"composing scenes: {n:,} of {count:,}")

        coco = compose(area, count, concepts, seed, val_fraction, progress=composed)

        def importing(fraction: float, message: str) -> None:
            if progress:
                progress(0.3 + 0.7 * fraction, message)

        return import_dataset(user, coco, name, "coco", val_fraction, seed, importing,
                              source_label=f"Caltech-101 scenes ({count:,}, {concepts} concepts, seed {seed})")
    finally:
        staging.remove(area)
