"""Datasets: command line, exports that import back as they were, and the sample data."""

from __future__ import annotations

import json
import zipfile

import pytest

from core.cli import main
from core.data import samples
from core.data.export import export_dataset
from core.data.importer import import_dataset
from core.store import datasets as store


def _content(name: str) -> list[tuple]:
    ds = store.get_dataset("local", name)
    return sorted((r["path"].rsplit("/", 1)[1], tuple(r["labels"]), r["split"], tuple(map(str, r["boxes"])))
                  for r in store.dataset_records(ds["id"]))


def test_cli_import_list_show_delete(small_folder, capsys):
    assert main(["dataset", "import", str(small_folder), "--name", "cli", "--val-fraction", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report)[:7] == ["dataset", "version", "items", "concepts", "splits", "skipped", "duplicates"]
    assert report["items"] == 18 and report["splits"] == {"train": 9, "val": 9, "test": 0}
    assert main(["dataset", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == ["cli"] and listed[0]["items"] == 18
    assert main(["dataset", "show", "cli", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["concepts"] == {"accordion": 6, "anchor": 6, "ant": 6} and shown["eval_split"] == "val"
    assert main(["dataset", "delete", "cli"]) == 0
    capsys.readouterr()
    assert main(["dataset", "show", "cli"]) == 2
    assert "Unknown dataset 'cli'" in capsys.readouterr().err


def test_cli_rejected_import_exits_nonzero(tmp_path, capsys):
    empty = tmp_path / "e.zip"
    zipfile.ZipFile(empty, "w").close()
    assert main(["dataset", "import", str(empty), "--name", "e"]) == 2
    assert "archive is empty" in capsys.readouterr().err
    assert main(["dataset", "import", str(tmp_path / "missing"), "--name", "e", "--json"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["folder", "csv", "coco"])
def test_export_imports_back(tmp_path, small_folder, fmt):
    import_dataset("local", small_folder, "orig")
    ds = store.get_dataset("local", "orig")
    first = store.dataset_records(ds["id"])[0]["item_id"]
    store.set_item_labels(first, ["accordion", "music"])  # multi-label survives csv and coco
    out = export_dataset("local", "orig", fmt, tmp_path / f"out-{fmt}.zip")
    report = import_dataset("local", out, "back")
    before, after = _content("orig"), _content("back")
    if fmt == "folder":  # one folder per concept: a multi-label image is one item with both labels again
        assert report["duplicates"] == 1
    assert after == before


def test_export_coco_keeps_boxes(tmp_path):
    from PIL import Image

    root = tmp_path / "c"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 0, 0)).save(root / f"{i}.png")
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(3)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10 + i, 5]} for i in range(3)],
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "a.json").write_text(json.dumps(coco))
    import_dataset("local", root / "a.json", "boxes")
    out = export_dataset("local", "boxes", "coco", tmp_path / "b.zip")
    import_dataset("local", out, "boxes2")
    assert _content("boxes") == _content("boxes2")


def test_digits_sample():
    report = samples.import_digits("local", "digits")
    assert report["items"] <= 1797 and len(report["concepts"]) == 10
    assert report["items"] + report["duplicates"] == 1797
    assert report["splits"]["val"] == pytest.approx(0.2 * report["items"], rel=0.05)
    rec = store.dataset_records(store.get_dataset("local", "digits")["id"])[0]
    assert (rec["width"], rec["height"]) == (32, 32)


@pytest.mark.skipif(not samples.fashion_mnist_available(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_sample():
    report = samples.import_fashion_mnist("local", "fm", per_class=5, test_per_class=2, val_fraction=0.2)
    assert report["splits"] == {"train": 40, "val": 10, "test": 20}
    assert len(report["concepts"]) == 10 and all(n == 7 for n in report["concepts"].values())
    assert store.eval_split(store.get_dataset("local", "fm")["id"]) == "test"
