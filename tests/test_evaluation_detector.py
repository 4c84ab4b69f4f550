"""Detector evaluation and prediction on a tiny Faster R-CNN trained in the test on real photos with COCO boxes."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from tests.conftest import caltech_slice


@pytest.fixture(scope="module")
def detector_home(tmp_path_factory):
    """COCO import of 9 Caltech photos (3 concepts) with one box each, and a 1-epoch Faster R-CNN on it."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("dethome")
    mp.setenv("DEEPTRAIN_HOME", str(home))
    try:
        _train_detector(tmp_path_factory.mktemp("detsrc"))
    finally:
        mp.undo()
    return home


@pytest.fixture
def detector(detector_home, monkeypatch) -> str:
    monkeypatch.setenv("DEEPTRAIN_HOME", str(detector_home))
    return "det"


def _train_detector(tmp_path) -> None:
    from core.data.importer import import_dataset
    from core.training import train

    src = caltech_slice(tmp_path / "src", per_class=3)
    images, anns, cats = [], [], {}
    for i, f in enumerate(sorted(p for p in src.rglob("*.jpg"))):
        w, h = Image.open(f).size
        cat = cats.setdefault(f.parent.name, len(cats) + 1)
        images.append({"id": i, "file_name": f"{f.parent.name}/{f.name}", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": cat, "bbox": [w * 0.2, h * 0.2, w * 0.6, h * 0.6]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cats.items()]}
    (src / "ann.json").write_text(json.dumps(coco))
    import_dataset("local", src / "ann.json", "boxes", val_fraction=0.34)
    res = train({"owner": "local", "dataset": "boxes", "kind": "detector", "template": "Studio_FasterRCNN",
                 "params": {"pretrained_weights": "None", "image_size": 128, "num_epochs": 1, "batch_size": 3,
                            "detection_score_threshold": 0.0},
                 "name": "det", "seed": 0}, tmp_path / "run")
    assert res.model_id is not None


def test_detector_evaluation_matches_direct_computation(detector):
    from core.evaluation import metrics as m
    from core.evaluation import service
    from core.store import datasets as ds

    row = service.get("local", detector)
    result = service.evaluate("local", detector)
    records = [r for r in ds.dataset_records(row["dataset_id"], ds.eval_split(row["dataset_id"])) if r["boxes"]]
    assert result["images"] == len(records) > 0
    preds = service.load_model(row).predict(service.open_images([r["path"] for r in records]))
    direct = m.detector_metrics([service.box_arrays(p["boxes"], row["concepts"]) for p in preds],
                                [service.box_arrays(r["boxes"], row["concepts"]) for r in records], row["concepts"])
    assert result["map"] == pytest.approx(direct["map"]) and result["ap50"] == pytest.approx(direct["ap50"])
    assert set(result["per_concept_ap"]) == set(row["concepts"])
    for v in result["per_concept_ap"].values():
        assert v is None or 0.0 <= v <= 1.0
    assert result["samples"] and "truth" in result["samples"][0]


def test_detector_predict_report_and_export_limits(detector, tmp_path):
    from core.evaluation import export, service
    from core.evaluation.predict import predict
    from core.evaluation.report import build_report, draw_boxes

    row = service.get("local", detector)
    image = service.evaluate("local", detector)["samples"][0]["path"]
    out = predict("local", detector, [image])
    assert out[0]["image"] == image and isinstance(out[0]["boxes"], list)
    for b in out[0]["boxes"]:
        assert {"concept", "x", "y", "w", "h", "score"} <= set(b) and b["concept"] in row["concepts"]
    assert np.asarray(draw_boxes(image, [], out[0]["boxes"])).ndim == 3
    assert "Average precision per concept" in build_report("local", detector)
    with pytest.raises(UserError, match="detectors export as a zip or ONNX"):
        export.export_model("local", detector, "torchscript", tmp_path / "d.pt")
    assert export.export_model("local", detector, "zip", tmp_path / "d.zip")["format"] == "zip"
    assert export.formats_for(row) == ("zip", "onnx")


def test_detector_onnx_export_finds_the_same_boxes_at_any_image_size(detector, tmp_path):
    """The ONNX file takes one (3, H, W) image in [0, 1] of any size and returns the original's boxes, labels and
    scores; its metadata names the concepts behind the labels."""
    import onnx
    import onnxruntime as ort
    import torch

    from core.evaluation import export, service

    row = service.get("local", detector)
    done = export.export_model("local", detector, "onnx", tmp_path / "d.onnx")
    assert done["format"] == "onnx" and done["max_diff"] <= export.BOX_TOLERANCE_PX and done["detections"] > 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "d.onnx")).metadata_props}
    assert json.loads(meta["concepts"]) == list(row["concepts"]) and meta["labels"] == "concept index + 1"
    described = json.loads(meta["description"])  # the whole description, as every export carries it
    assert described["kind"] == "detector" and described["output"] == "boxes, labels, scores"
    assert described["input_shape"] == [3, "height", "width"] and described["resize"] == "detector"
    assert described["input_size"] == row["preprocess"]["image_size"] and described["concepts"] == row["concepts"]
    with zipfile.ZipFile(export.export_model("local", detector, "zip", tmp_path / "d.zip")["path"]) as zf:
        assert json.loads(zf.read("config.json"))["description"] == described

    loaded = service.load_model(row)
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    samples = service.evaluate("local", detector)["samples"]
    for sample in samples[:2]:
        image = loaded.transform(service.open_images([sample["path"]])[0])
        image = image[:, : image.shape[1] * 3 // 4, :]  # another size than the export's example
        with torch.inference_mode():
            ref = loaded.net([image])[0]
        boxes, labels, scores = session.run(["boxes", "labels", "scores"], {"image": image.numpy()})
        assert len(scores) > 0
        matched = export.match_detections({k: v.numpy() for k, v in ref.items()},
                                          {"boxes": boxes, "labels": labels, "scores": scores})
        assert matched is not None, (labels, ref["labels"])
        assert matched[0] <= export.BOX_TOLERANCE_PX and matched[1] <= export.SCORE_TOLERANCE, matched


def test_detections_are_matched_as_sets_not_by_position():
    """Detections with equal scores come in no defined order: ONNX Runtime 1.32 returns ties in another order than
    PyTorch, so a positional comparison failed on a fresh install. A permutation matches; another label, one box
    fewer or a moved box does not."""
    from core.evaluation import export

    ref = {"boxes": np.array([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]], dtype=np.float32),
           "labels": np.array([1, 2, 1]), "scores": np.array([0.9, 0.5, 0.5], dtype=np.float32)}
    order = [0, 2, 1]
    permuted = {k: v[order] for k, v in ref.items()}
    assert not np.array_equal(permuted["labels"], ref["labels"])  # what the old positional check refused
    assert export.match_detections(ref, permuted) == (0.0, 0.0)
    relabelled = {**permuted, "labels": np.array([1, 2, 2])}
    assert export.match_detections(ref, relabelled) is None
    assert export.match_detections(ref, {k: v[:2] for k, v in ref.items()}) is None
    moved = {k: v.copy() for k, v in permuted.items()}
    moved["boxes"][1] += 3.0
    box_diff, score_diff = export.match_detections(ref, moved)
    assert box_diff == 3.0 and score_diff == 0.0


def test_detector_snippets_print_boxes(detector, tmp_path):
    """The example programs beside a detector's exports (ONNX, and the zip's predict_example.py) run and print
    each image's boxes with their concepts."""
    import subprocess
    import sys

    from core import paths
    from core.evaluation import export, service

    row = service.get("local", detector)
    image = service.evaluate("local", detector)["samples"][0]["path"]
    for fmt, suffix in (("onnx", "onnx"), ("zip", "zip")):
        model = export.export_model("local", detector, fmt, tmp_path / f"d.{suffix}")["path"]
        script = tmp_path / f"predict_{fmt}.py"
        script.write_text(export.snippet(row, fmt))
        env = {**os.environ, "PYTHONPATH": str(paths.PROJECT_ROOT)}  # the zip's program uses the studio's code
        out = subprocess.run([sys.executable, str(script), model, image], capture_output=True, text=True,
                             timeout=180, cwd=paths.PROJECT_ROOT, env=env, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(image) and any(f"('{c}'," in out.stdout for c in row["concepts"]), out.stdout



def test_raising_detection_score_threshold_returns_fewer_boxes_all_above_it(detector):
    """Boxes score above the threshold, not at it (the glossary's word); a higher threshold gives fewer boxes."""
    from core.evaluation import service
    from core.evaluation.predict import above, predict

    image = service.evaluate("local", detector)["samples"][0]["path"]
    every = predict("local", detector, [image], score_threshold=0.0)[0]["boxes"]
    assert len(every) >= 2, "the tiny detector finds several boxes at threshold 0"
    scores = sorted(b["score"] for b in every)
    middle = scores[len(scores) // 2]
    fewer = predict("local", detector, [image], score_threshold=middle)[0]["boxes"]
    assert 0 < len(fewer) < len(every) and all(b["score"] > middle for b in fewer)
    assert fewer == above(every, middle)  # the page's slider filters the same way
    with pytest.raises(UserError, match="score_threshold must be a number from 0 to 1"):
        predict("local", detector, [image], score_threshold=1.5)
