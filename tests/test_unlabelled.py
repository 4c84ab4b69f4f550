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


def _mixed(tmp_path, small_folder) -> dict[str, list[int]]:
    """Dataset "u": accordion, anchor, ant (6 each) labelled; 2 more ants and 3 barrels unlabelled (beside)."""
    _photos(small_folder, small_folder, 3)  # barrels p0..p2.jpg
    for f in sorted((CALTECH / "101_ObjectCategories" / "ant").iterdir())[10:12]:
        shutil.copy(f, small_folder / f"ant-{f.name}")
    import_dataset("local", small_folder, "u", workers=1)
    recs = datasets.dataset_records("local", "u")
    return {"barrel": [r["item_id"] for r in recs if r["source_path"].startswith("p")],
            "ant": [r["item_id"] for r in recs if r["source_path"].startswith("ant-")]}


def test_label_these_first_ranks_the_new_kind_of_image_first(tmp_path, small_folder):
    from core.data import labelling

    unlabelled = _mixed(tmp_path, small_folder)
    first = labelling.label_first("local", "u", n=10)
    assert sorted(f["item"] for f in first) == sorted(unlabelled["barrel"] + unlabelled["ant"])  # only 5 to rank
    assert first[0]["item"] in unlabelled["barrel"], first
    assert [f["score"] for f in first][:1] == [max(f["score"] for f in first)]
    ants = [f for f in first if f["item"] in unlabelled["ant"]]
    assert all(f["guess"] == "ant" for f in ants), ants  # the embeddings know ants already
    assert all(0 <= f["uncertainty"] <= 1 and 0 <= f["novelty"] <= 2 for f in first)


def test_model_suggestions_accepted_above_a_confidence(tmp_path, small_folder):
    import pytest

    from core.data import labelling
    from core.errors import UserError
    from core.training import train

    unlabelled = _mixed(tmp_path, small_folder)
    params = {"pretrained_weights": "ImageNet-1k", "image_size": 96, "num_epochs": 2, "batch_size": 8}
    res = train({"owner": "local", "dataset": "u", "kind": "classifier", "name": "clf", "seed": 0,
                 "template": "Studio_EfficientNetLite0_Transfer", "params": params}, tmp_path / "run")
    suggestions = labelling.suggest_labels("local", "u", res.model_id)
    assert sorted(s["item"] for s in suggestions) == sorted(unlabelled["barrel"] + unlabelled["ant"])
    assert all(len(s["suggested"]) == 1 and s["suggested"][0] in ("accordion", "anchor", "ant") for s in suggestions)
    confidences = [s["confidence"] for s in suggestions]
    assert confidences == sorted(confidences, reverse=True)

    version = datasets.get_dataset("local", "u")["version"]
    cut = confidences[1]  # the two most confident (and any tied with the second)
    above = sum(c >= cut for c in confidences)
    assert 2 <= above < len(suggestions), confidences
    assert labelling.accept_suggested("local", "u", suggestions, cut) == (version + 1, above)
    for s in suggestions[:above]:
        assert datasets.get_item("local", s["item"])["labels"] == s["suggested"]
    assert all(datasets.get_item("local", s["item"])["labels"] == [] for s in suggestions[above:])
    assert labelling.accept_suggested("local", "u", suggestions, 0.0)[1] == len(suggestions) - above  # the rest
    with pytest.raises(UserError, match="min_confidence must be between 0 and 1"):
        labelling.accept_suggested("local", "u", suggestions, 1.5)


def test_page_suggests_accepts_and_lists_what_to_label_first(tmp_path, small_folder):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from core.training import train

    unlabelled = _mixed(tmp_path, small_folder)
    todo = sorted(unlabelled["barrel"] + unlabelled["ant"])
    params = {"pretrained_weights": "ImageNet-1k", "image_size": 96, "num_epochs": 1, "batch_size": 8}
    train({"owner": "local", "dataset": "u", "kind": "classifier", "name": "clf", "seed": 0,
           "template": "Studio_EfficientNetLite0_Transfer", "params": params}, tmp_path / "run")
    page = str(Path(__file__).resolve().parent.parent / "pages" / "1_Datasets.py")
    at = AppTest.from_file(page, default_timeout=60).run()
    at.toggle(key="ds_u_show").set_value(True).run()
    at.button(key="ds_u_first").click().run()
    assert not at.exception
    captions = [str(i.proto.imgs[0].caption) for i in at.get("image") if i.proto.imgs]
    firsts = [int(c.split()[1][1:]) for c in captions if c.startswith("first #")]
    assert sorted(firsts) == todo and firsts[0] in unlabelled["barrel"]

    at.button(key="ds_u_suggest").click().run()
    assert not at.exception
    version = datasets.get_dataset("local", "u")["version"]
    at.slider(key="ds_u_min").set_value(0.0).run()
    at.button(key="ds_u_accept").click().run()
    assert not at.exception
    assert datasets.get_dataset("local", "u")["version"] == version + 1
    assert all(datasets.get_item("local", i)["labels"] for i in todo)
    assert any("5 image(s) labelled as suggested" in s.value for s in at.success)
