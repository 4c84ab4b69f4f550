"""Detector evaluation and prediction on a tiny Faster R-CNN trained in the test on composed scenes of real photos
(core.data.scenes: several objects anywhere in each photo, COCO boxes)."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from tests.model_support import make_detector_home


@pytest.fixture(scope="module")
def detector_home(tmp_path_factory):
    """Composed scenes (objects anywhere, several per photo) and a 1-epoch Faster R-CNN on them."""
    return make_detector_home(tmp_path_factory, "dethome")


@pytest.fixture
def detector(detector_home, monkeypatch) -> str:
    monkeypatch.setenv("DEEPTRAIN_HOME", str(detector_home))
    return "det"


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
    from core.evaluation.drawing import draw_boxes
    from core.evaluation.predict import predict
    from core.evaluation.report import build_report

    row = service.get("local", detector)
    image = service.evaluate("local", detector)["samples"][0]["path"]
    out = predict("local", detector, [image])
    assert out[0]["image"] == image and isinstance(out[0]["boxes"], list)
    for b in out[0]["boxes"]:
        assert {"concept", "x", "y", "w", "h", "score"} <= set(b) and b["concept"] in row["concepts"]
    assert np.asarray(draw_boxes(image, out[0]["boxes"], row["concepts"])).ndim == 3
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


def test_predict_out_draws_each_photo_with_its_boxes(detector, tmp_path, capsys):
    """--out writes each photo with its boxes drawn; --json keeps its shape (plus where the drawing went)."""
    from core.cli import main
    from core.evaluation import service
    from core.evaluation.drawing import concept_colours

    samples = service.evaluate("local", detector)["samples"][:2]
    paths = [s["path"] for s in samples]
    assert main(["predict", detector, *paths, "--json", "--out", str(tmp_path / "drawn")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["image"] for e in out] == paths
    assert all({"image", "concepts", "boxes", "drawn"} == set(e) for e in out)
    for entry, path in zip(out, paths, strict=True):
        drawn = Image.open(entry["drawn"])
        assert drawn.width == Image.open(path).width and drawn.height > Image.open(path).height  # the legend strip
        if entry["boxes"]:  # the best box's outline is in its concept's colour
            best = max(entry["boxes"], key=lambda b: b["score"])
            colour = concept_colours(service.get("local", detector)["concepts"])[best["concept"]]
            x, y = round(best["x"] + best["w"] / 2), round(best["y"] + best["h"])
            rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
            near = np.asarray(drawn)[y - 2:y + 2, x - 1:x + 2].reshape(-1, 3).astype(int)
            assert (np.abs(near - rgb).max(axis=1) <= 2).any()
    assert main(["predict", detector, paths[0], "--score-threshold", "2"]) == 2


def test_drawn_boxes_take_their_concepts_colours_and_a_legend(tmp_path):
    from core.evaluation.drawing import concept_colours, draw_boxes

    photo = Image.new("RGB", (200, 100), "white")
    boxes = [{"concept": "b", "x": 20, "y": 30, "w": 50, "h": 40, "score": 0.9}]
    drawn = np.asarray(draw_boxes(photo, boxes, ["a", "b"]))
    rgb = tuple(int(concept_colours(["a", "b"])["b"][i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(drawn[69, 45]) == rgb and tuple(drawn[50, 45]) == (255, 255, 255)  # bottom edge; inside stays
    assert drawn.shape[0] > 100 and (drawn[100:] != 255).any()  # the legend names b
    plain = np.asarray(draw_boxes(photo, boxes, ["a", "b"], legend=False))
    assert plain.shape == (100, 200, 3)


def test_detector_gallery_filters_by_concept_and_kind_of_error(detector):
    from core.evaluation import metrics as m
    from core.evaluation import service
    from core.evaluation.report import build_report

    result = service.evaluate("local", detector)
    samples = result["samples"]
    assert len(samples) == result["images"] and all("errors" in s and "concepts" in s for s in samples)
    assert service.detector_samples(result) == samples
    errors = service.detector_samples(result, error=service.ANY_ERROR)
    clean = service.detector_samples(result, error=service.NO_ERROR)
    assert len(errors) + len(clean) == len(samples) and errors, "an untrained detector errs"
    for kind in m.ERROR_KINDS:
        assert all(kind in s["errors"] for s in service.detector_samples(result, error=kind))
    concept = result["concepts"][0]
    assert all(concept in s["concepts"] for s in service.detector_samples(result, concept=concept))
    with pytest.raises(UserError, match="error must be one of"):
        service.detector_samples(result, error="bogus")
    page = build_report("local", detector)
    assert "Precision-recall" in page and "Where the boxes went" in page and "Images with errors" in page


def test_models_page_detector_view_and_predict(detector):
    """AppTest of the Models page on the detector (here to share its trained model): metrics by size, the PR curves,
    the per-concept table, the gallery filtered by kind of error and paged; Predict draws boxes and the score slider
    filters them without predicting again."""
    from streamlit.testing.v1 import AppTest

    from core.evaluation import service
    from core.store.models import get_model
    from tests.conftest import ROOT

    result = service.evaluate("local", detector)
    at = AppTest.from_file(str(ROOT / "pages" / "4_Models.py"), default_timeout=180).run()
    at.selectbox(key="models_selected").set_value(get_model("local", detector)["id"]).run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["AP50"]) == pytest.approx(result["ap50"], abs=1e-3) and "mAP small" in metrics
    table = next(df.value for df in at.dataframe if "concept" in df.value.columns)
    assert list(table["concept"]) == result["concepts"] and "missed" in table.columns
    assert len(at.get("plotly_chart")) >= 3  # AP per concept, PR curves, where the boxes went
    errors = service.detector_samples(result, error="missed")
    at.selectbox(key="models_det_error").set_value("a missed object").run()
    assert not at.exception, at.exception
    assert any(c.value == f"{len(errors)} of {len(result['samples'])} images" for c in at.caption)
    shown = _image_captions(at)
    assert sum(c.endswith(": ground truth") for c in shown) == min(len(errors), 6) > 0
    assert sum(c.startswith("predicted (") and "missed" in c for c in shown) == min(len(errors), 6)

    score_key = f"models_predict_score_{get_model('local', detector)['id']}"  # each model starts at its own
    slider = at.slider(key=score_key)  # the Predict tab (tabs render every widget)
    assert slider.value == pytest.approx(0.0)  # the model's detection_score_threshold
    at.radio(key="models_predict_source").set_value("Dataset").run()
    at.button(key="models_predict_btn").click().run()
    assert not at.exception, at.exception
    found = [c for c in _image_captions(at) if " boxes above " in c]
    assert len(found) == 1 and found[0].endswith("above 0.00"), found
    total = int(found[0].split(": ")[-1].split(" of ")[1].split()[0])
    assert total > 0
    at.slider(key=score_key).set_value(0.5).run()
    after = [c for c in _image_captions(at) if " boxes above " in c]
    kept = int(after[0].split(": ")[-1].split(" of ")[0])
    assert kept < total and after[0].endswith("above 0.50"), after


def _image_captions(at) -> list[str]:
    return [str(img.caption) for i in at.get("image") for img in i.proto.imgs]


def test_two_detectors_compared_side_by_side(detector):
    """The Lite0 detector (trained from its offline weights) beside the Faster R-CNN: headline figures and AP per
    concept of each, from each one's own evaluation."""
    from core.evaluation import charts, service

    comparison = service.compare("local", [detector, "lite0"])
    assert comparison["kind"] == "detector" and [r["model"] for r in comparison["table"]] == [detector, "lite0"]
    for row, name in zip(comparison["table"], (detector, "lite0"), strict=True):
        result = service.evaluate("local", name)
        assert row["map"] == result["map"] and row["ap50"] == result["ap50"] and "map_small" in row
        for line in comparison["per_concept"]:
            assert line[f"{name} AP50"] == result["per_concept_ap50"][line["concept"]]
    assert [line["concept"] for line in comparison["per_concept"]] == service.get("local", detector)["concepts"]
    (bars,) = charts.compare_curves(comparison)
    assert [t.name for t in bars.data] == [detector, "lite0"]


def test_a_detector_report_leaves_out_an_image_gone_since_its_evaluation(detector, monkeypatch):
    """The report's gallery opens each image as predictions do (core.evaluation.predict.open_image); one whose stored
    file is gone is left out of the gallery, and the report is still built."""
    import copy

    from core.evaluation import service
    from core.evaluation.report import build_report

    result = copy.deepcopy(service.evaluate("local", detector))
    result["samples"] = [{**result["samples"][0], "path": "/nonexistent/gone.jpg", "errors": ["missed"]}]
    monkeypatch.setattr(service, "evaluate", lambda *a, **k: result)
    text = build_report("local", detector)
    assert "Images with errors (1; 0 shown)" in text
