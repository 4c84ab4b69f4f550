"""Tiny real datasets for training tests: a few Caltech-101 photos as a CSV manifest (fixed splits) or COCO boxes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

CALTECH = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "caltech101" / "101_ObjectCategories"
CLASSES = ("accordion", "anchor")


def _photos(dest: Path, per_class: int) -> list[tuple[str, str]]:
    """Copy ``per_class`` photos of each class into ``dest``; (relative path, class) pairs."""
    if not CALTECH.is_dir():
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    out = []
    for cls in CLASSES:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((CALTECH / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / cls / f.name)
            out.append((f"{cls}/{f.name}", cls))
    return out


def split_of(i: int, n_train: int) -> str:
    return "train" if i < n_train else "val"


def manifest_dataset(tmp: Path, name: str = "tiny", n_train: int = 2, n_val: int = 1) -> dict:
    """Import 2 classes x (n_train + n_val) photos with fixed splits; returns the import report."""
    from core.data.importer import import_dataset

    src = tmp / f"src-{name}"
    photos = _photos(src, n_train + n_val)
    lines = ["path,labels,split"]
    per_class: dict[str, int] = {}
    for rel, cls in photos:
        i = per_class.get(cls, 0)
        per_class[cls] = i + 1
        lines.append(f"{rel},{cls},{split_of(i, n_train)}")
    (src / "manifest.csv").write_text("\n".join(lines) + "\n")
    return import_dataset("local", src / "manifest.csv", name, fmt="csv")


def coco_dataset(tmp: Path, name: str = "boxes", n_train: int = 2, n_val: int = 1) -> dict:
    """The same photos as a COCO detection file: one box per photo around its central 60%."""
    from core.data.importer import import_dataset

    src = tmp / f"src-{name}"
    photos = _photos(src, n_train + n_val)
    images, annotations = [], []
    per_class: dict[str, int] = {}
    for n, (rel, cls) in enumerate(photos, 1):
        i = per_class.get(cls, 0)
        per_class[cls] = i + 1
        with Image.open(src / rel) as im:
            w, h = im.size
        images.append({"id": n, "file_name": rel, "width": w, "height": h, "split": split_of(i, n_train)})
        annotations.append({"id": n, "image_id": n, "category_id": CLASSES.index(cls) + 1,
                            "bbox": [0.2 * w, 0.2 * h, 0.6 * w, 0.6 * h]})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    (src / "coco.json").write_text(json.dumps(coco))
    return import_dataset("local", src / "coco.json", name, fmt="coco")


def tiny_params(template, **overrides) -> dict:
    """Parameters that make any template train 2 steps quickly: random weights, smallest image size, batch 2."""
    names = {p.name: p for p in template.params}
    size = names["image_size"]
    params = {"image_size": int(size.narrow_min or size.min or 32), "batch_size": 2, "num_epochs": 1}
    if "pretrained_weights" in names:
        params["pretrained_weights"] = "None"
    if "num_items_per_epoch" in names:
        params["num_items_per_epoch"] = 4
    if "embeddings_size" in names:
        params["embeddings_size"] = 32
    if "tune_head" in names:  # the head steps as set (a fitted head has no steps: tests/test_head_tuning.py)
        params["tune_head"] = False
    params.update(overrides)
    return params
