"""Detection scenes composed from Caltech-101: exact boxes, real variety (positions, sizes, overlaps), disjoint
train and val sources, and the import as a COCO dataset from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.data import scenes
from core.errors import UserError

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 200, 20)}


def _solid_root(tmp_path):
    """A Caltech-shaped folder of real image files: grey backgrounds and one solid colour per concept."""
    root = tmp_path / "caltech"
    (root / scenes.BACKGROUNDS).mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (200 + 10 * i, 150), (128, 128, 128)).save(root / scenes.BACKGROUNDS / f"bg_{i}.jpg")
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(4):
            Image.new("RGB", (120, 80 + 10 * i), colour).save(root / name / f"image_{i:04d}.png")
    return root


def test_boxes_are_the_visible_pixels_of_each_object(tmp_path):
    """With solid-colour objects on grey, each box must be the bounding box of its colour's pixels (JPEG blurs an
    edge by a pixel at most), hidden parts left out."""
    root = _solid_root(tmp_path)
    coco = json.loads(scenes.compose(tmp_path / "out", 12, list(COLOURS), seed=3, root=root).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    checked = 0
    for im in coco["images"]:
        pixels = np.asarray(Image.open(tmp_path / "out" / im["file_name"]).convert("RGB")).astype(int)
        palette = np.array([*COLOURS.values(), (128, 128, 128)])
        nearest = np.abs(pixels[:, :, None, :] - palette[None, None]).sum(axis=3).argmin(axis=2)
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        for name in {names[a["category_id"]] for a in anns}:
            mine = [a for a in anns if names[a["category_id"]] == name]
            if len(mine) != 1:
                continue  # two objects of one colour are one blob: not checkable this way
            ys, xs = np.nonzero(nearest == list(COLOURS).index(name))
            x, y, w, h = mine[0]["bbox"]
            assert abs(xs.min() - x) <= 1 and abs(ys.min() - y) <= 1, (im["file_name"], name)
            assert abs(xs.max() + 1 - (x + w)) <= 1 and abs(ys.max() + 1 - (y + h)) <= 1, (im["file_name"], name)
            checked += 1
    assert checked >= 10


def test_caltech_scenes_vary_and_keep_val_sources_apart(tmp_path, caltech):
    root = caltech / "101_ObjectCategories"
    coco_file = scenes.compose(tmp_path / "out", 60, 3, seed=0, val_fraction=0.25, root=root)
    coco = json.loads(coco_file.read_text())
    assert [c["name"] for c in coco["categories"]] == scenes.default_concepts(3, root)
    assert sum(im["split"] == "val" for im in coco["images"]) == 15
    per_image: dict[int, list] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= scenes.SCENE_SIDE and y + h <= scenes.SCENE_SIDE and w > 0 and h > 0
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert len(per_image) == 60 and max(len(b) for b in per_image.values()) >= 3
    areas = [w * h for b in per_image.values() for _, _, w, h in b]
    assert min(areas) < 32**2 * 2 and max(areas) > 96**2  # small to large boxes, COCO's size bands
    centres = np.array([(x + w / 2, y + h / 2) for b in per_image.values() for x, y, w, h in b])
    assert centres.std(axis=0).min() > 40  # anywhere in the scene, not one box over the middle

    def overlaps(a, b):
        return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])

    assert any(overlaps(a, b) for boxes in per_image.values() for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the same seed gives the same scenes
    again = json.loads(scenes.compose(tmp_path / "again", 60, 3, seed=0, val_fraction=0.25, root=root).read_text())
    assert again["annotations"] == coco["annotations"]


def test_photos_and_backgrounds_of_val_scenes_are_held_out(tmp_path, caltech):
    """compose splits each concept's photos and the backgrounds before drawing from them."""
    rng = np.random.default_rng(0)
    files = [tmp_path / f"{i}.jpg" for i in range(10)]
    train, val = scenes._split(files, 0.2, rng)
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(files)


def test_import_scenes_from_the_command_line(caltech, capsys):
    from core.cli import main
    from core.store import datasets as ds

    assert main(["dataset", "samples", "scenes", "--name", "sc", "--count", "20", "--concepts", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 20 and set(report["concepts"]) == set(scenes.default_concepts(2))
    row = ds.find_dataset("local", "sc")
    records = ds.dataset_records(row["id"])
    assert {r["split"] for r in records} == {"train", "val"} and sum(len(r["boxes"]) for r in records) >= 20
    with pytest.raises(UserError, match="count must be a whole number from 1"):
        scenes.import_scenes("local", "bad", count=0)
    assert main(["dataset", "samples", "scenes", "--name", "bad", "--concepts", "500"]) == 2
    assert ds.find_dataset("local", "bad") is None
