"""Unlabelled images (issue 22): imports keep them (a manifest row with no labels, COCO images without annotations,
a folder's images outside the concept folders), a trained model's predictions are offered as labels and accepted
in bulk above a confidence, and "label these first" ranks the rest."""

from __future__ import annotations

import json
import shutil

from core.data import service as datasets
from core.data.importer import import_dataset
from tests.conftest import CALTECH


def _photos(small_folder, dest, n: int = 3) -> list[str]:
    """``n`` Caltech-101 photos of a concept the small folder lacks (barrel), copied to ``dest`` as p0.jpg..."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for i, f in enumerate(sorted((CALTECH / "101_ObjectCategories" / "barrel").iterdir())[:n]):
        shutil.copy(f, dest / f"p{i}.jpg")
        names.append(f"p{i}.jpg")
    return names


def test_manifests_with_empty_labels_import_unlabelled(tmp_path, small_folder):
    root = tmp_path / "m"
    names = _photos(small_folder, root)
    (root / "m.csv").write_text(f"path,labels\n{names[0]},ant\n{names[1]},\n{names[2]},  \n")
    report = import_dataset("local", root / "m.csv", "csv")
    assert report["items"] == 3 and report["unlabeled"] == 2
    assert any("2 image(s) have no label" in w for w in report["warnings"])
    by_path = {r["source_path"]: r["labels"] for r in datasets.dataset_records("local", "csv")}
    assert by_path == {names[0]: ["ant"], names[1]: [], names[2]: []}

    (root / "m.json").write_text(json.dumps([{"path": names[0], "labels": []}, {"path": names[1]},
                                             {"path": names[2], "labels": ["ant"]}]))
    report = import_dataset("local", root / "m.json", "js")
    assert report["unlabeled"] == 2
    assert sorted(len(r["labels"]) for r in datasets.dataset_records("local", "js")) == [0, 0, 1]


def test_coco_images_without_annotations_import_unlabelled(tmp_path, small_folder):
    root = tmp_path / "c"
    names = _photos(small_folder, root, 2)
    from PIL import Image

    w, h = Image.open(root / names[0]).size
    coco = {"images": [{"id": 1, "file_name": names[0], "width": w, "height": h},
                       {"id": 2, "file_name": names[1]}],
            "categories": [{"id": 1, "name": "ant"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]}
    (root / "coco.json").write_text(json.dumps(coco))
    report = import_dataset("local", root / "coco.json", "coco")
    assert report["items"] == 2 and report["unlabeled"] == 1
    labels = {r["source_path"]: (r["labels"], len(r["boxes"])) for r in datasets.dataset_records("local", "coco")}
    assert labels == {names[0]: (["ant"], 1), names[1]: ([], 0)}


def test_folder_images_outside_concept_folders_import_unlabelled(tmp_path, small_folder):
    _photos(small_folder, small_folder, 2)  # p0.jpg, p1.jpg beside the concept folders
    (small_folder / "notes.txt").write_text("not an image")
    report = import_dataset("local", small_folder, "f")
    assert report["items"] == 18 + 2 and report["unlabeled"] == 2
    assert [s["path"] for s in report["skipped"]] == ["notes.txt"]
    assert sorted(r["source_path"] for r in datasets.dataset_records("local", "f") if not r["labels"]) == \
        ["p0.jpg", "p1.jpg"]
