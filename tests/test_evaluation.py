"""Evaluation, prediction, report and export of models trained in the test on real Caltech-101 photos."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from tests.conftest import ROOT
from tests.model_support import TEMPLATE, make_trained_home


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    return make_trained_home(tmp_path_factory, "evalhome")


@pytest.fixture
def home(trained_home, monkeypatch) -> Path:
    monkeypatch.setenv("DEEPTRAIN_HOME", str(trained_home))
    return trained_home


def _row(name: str) -> dict:
    from core.store.models import get_model

    return get_model("local", name)


def _val_records(row: dict) -> list[dict]:
    from core.store import datasets as ds

    return ds.dataset_records(row["dataset_id"], ds.eval_split(row["dataset_id"]))


def test_classifier_figures_match_direct_computation(home):
    from core.evaluation import service

    row = _row("classifier")
    result = service.evaluate("local", "classifier", refresh=True)
    # Direct computation: run the network on the held-out images ourselves.
    records = _val_records(row)
    loaded = service.load_model(row)
    probs = loaded.predict(service.open_images([r["path"] for r in records]))
    concepts = row["concepts"]
    truth = np.array([concepts.index(r["labels"][0]) for r in records])
    assert result["items"] == len(records) > 0
    assert result["accuracy"] == pytest.approx(float((probs.argmax(1) == truth).mean()))
    top2 = np.argsort(-probs, axis=1)[:, :2]
    from core.evaluation import metrics as m

    assert m.top_k_accuracy(m.multi_hot([r["labels"] for r in records], concepts), probs, 2) == pytest.approx(
        float(np.mean([t in row_ for t, row_ in zip(truth, top2)])))
    for i, name in enumerate(concepts):
        row_ = next(r for r in result["per_concept"] if r["concept"] == name)
        predicted = probs[:, i] >= 0.5
        assert row_["labelled"] == int((truth == i).sum())
        assert row_["tp"] == int((predicted & (truth == i)).sum())
        assert row_["fp"] == int((predicted & (truth != i)).sum())
    counts = np.array(result["confusion"]["counts"])
    assert counts.sum() == len(records)
    assert np.trace(counts) == int((probs.argmax(1) == truth).sum())
    wrong = {mc["item_id"] for mc in result["misclassified"]}
    assert wrong == {r["item_id"] for r, t, p in zip(records, truth, probs.argmax(1)) if t != p}
    # cached: a second call reads the JSON beside the model
    assert (Path(row["path"]) / "evaluation.json").is_file()
    assert service.evaluate("local", "classifier") == result


def test_threshold_changes_per_concept_table(home):
    from core.evaluation import service

    row = _row("classifier")
    service.evaluate("local", "classifier")
    low = service.per_concept_at(row, 0.0)
    high = service.per_concept_at(row, 1.0 + 1e-9)
    assert all(r["predicted"] == sum(x["labelled"] for x in low) for r in low)  # every item predicted at 0
    assert all(r["predicted"] == 0 and r["tp"] == 0 for r in high)
    assert low != high


def test_other_threshold_reuses_cached_arrays(home):
    from core.evaluation import service

    row = _row("classifier")
    base = service.evaluate("local", "classifier")
    stamp = (Path(row["path"]) / "evaluation.json").stat().st_mtime_ns
    low = service.evaluate("local", "classifier", threshold=0.0)
    assert (Path(row["path"]) / "evaluation.json").stat().st_mtime_ns == stamp  # no re-run, no rewrite
    assert low["threshold"] == 0.0 and low["per_concept"] == service.per_concept_at(row, 0.0)
    assert low["accuracy"] == base["accuracy"] and low["per_concept"] != base["per_concept"]


def test_compare_two_classifiers_on_same_dataset_version(home, tmp_path):
    import shutil

    from core.evaluation import charts, service
    from core.store.models import register_model

    row = _row("classifier")
    shutil.copytree(row["path"], tmp_path / "twin")
    for f in ("evaluation.json", "evaluation.npz"):
        (tmp_path / "twin" / f).unlink(missing_ok=True)
    register_model(owner="local", name="twin", kind=row["kind"], template=row["template"], params=row["params"],
                   concepts=row["concepts"], preprocess=row["preprocess"], path=tmp_path / "twin",
                   dataset_id=row["dataset_id"], dataset_version=row["dataset_version"])
    cmp = service.compare("local", ["classifier", "twin"])
    assert [t["model"] for t in cmp["table"]] == ["classifier", "twin"]
    assert cmp["table"][0]["accuracy"] == cmp["table"][1]["accuracy"]  # same weights, same figures
    assert len(cmp["curves"]) == 2 and len(charts.compare_curves(cmp)) == 2


def test_confusion_cell_items(home):
    from core.evaluation import service

    row = _row("classifier")
    result = service.evaluate("local", "classifier")
    counts = result["confusion"]["counts"]
    concepts = row["concepts"]
    for t, true in enumerate(concepts):
        for p, pred in enumerate(concepts):
            items = service.cell_items(row, true, pred)
            assert len(items) == counts[t][p]
            assert all(true in it["labels"] for it in items)


def test_embedder_figures_match_direct_computation(home):
    from core.evaluation import metrics as m
    from core.evaluation import service
    from core.store import datasets as ds

    row = _row("embedder")
    result = service.evaluate("local", "embedder", refresh=True)
    split = ds.eval_split(row["dataset_id"])
    records = ds.dataset_records(row["dataset_id"])
    emb = service.load_model(row).embed(service.open_images([r["path"] for r in records]))
    q = [i for i, r in enumerate(records) if r["split"] == split]
    g = [i for i, r in enumerate(records) if r["split"] != split]
    hits = 0
    for i in q:
        nearest = max(g, key=lambda j: float(emb[i] @ emb[j]))
        hits += records[nearest]["labels"] == records[i]["labels"]
    assert result["recall_at_1"] == pytest.approx(hits / len(q))
    assert result["queries"] == len(q) and result["gallery"] == len(g)
    assert 0 <= result["map_at_r"] <= 1
    assert len(result["map"]) == len(records) and result["map_method"] in {"pca", "umap"}
    assert set(m.embedder_metrics(emb[q], [records[i]["labels"] for i in q], emb[g],
                                  [records[i]["labels"] for i in g])) <= set(result)
    # beside it, what the untrained general embedder scores on the same queries and gallery
    from core.models.general import general_embedder

    gen = general_embedder().embed(service.open_images([r["path"] for r in records]))
    direct = m.embedder_metrics(gen[q], [records[i]["labels"] for i in q], gen[g], [records[i]["labels"] for i in g])
    base = result["baseline"]
    assert base["model"] == "general" and base["label"].startswith("general")
    for key in ("recall_at_1", "recall_at_5", "map_at_r"):
        assert base[key] == pytest.approx(direct[key], abs=1e-6), key


def test_compare_models_same_dataset(home):
    from core.evaluation import service

    with pytest.raises(UserError, match="one kind"):
        service.compare("local", ["classifier", "embedder"])
    with pytest.raises(UserError, match="at least two"):
        service.compare("local", ["classifier"])


def test_predict_on_real_image(home, caltech):
    from core.evaluation.predict import predict

    image = sorted((caltech / "101_ObjectCategories" / "ant").iterdir())[0]
    out = predict("local", "classifier", [str(image)], top_k=2)
    assert out[0]["image"] == str(image) and out[0]["boxes"] == []
    assert len(out[0]["concepts"]) == 2
    assert {c["name"] for c in out[0]["concepts"]} <= set(_row("classifier")["concepts"])
    assert out[0]["concepts"][0]["probability"] >= out[0]["concepts"][1]["probability"]
    # same image as uploaded bytes gives the same answer
    again = predict("local", "classifier", [(image.name, image.read_bytes())], top_k=2)
    assert again[0]["concepts"] == out[0]["concepts"]


def test_predict_refuses_non_image(home):
    from core.evaluation.predict import predict

    with pytest.raises(UserError, match="notes.txt: not an image"):
        predict("local", "classifier", [("notes.txt", b"hello, not a picture")])
    with pytest.raises(UserError, match="broken.jpg"):
        predict("local", "classifier", [("broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 20)])


@pytest.mark.parametrize("kind", ["classifier", "embedder"])
def test_export_and_reload_give_same_outputs(home, tmp_path, kind):
    import onnxruntime as ort
    import torch

    from core.evaluation import export, service

    row = _row(kind)
    loaded = service.load_model(row)
    images = service.open_images([r["path"] for r in _val_records(row)][:3])
    x = torch.stack([loaded.transform(im) for im in images])
    with torch.inference_mode():
        reference = export.exported_module(loaded, export._output_mode(row))(x).numpy()
    direct = loaded.embed(images) if kind == "embedder" else loaded.predict(images)
    np.testing.assert_allclose(reference, direct, atol=1e-5)

    ts = export.export_model("local", kind, "torchscript", tmp_path / "m.pt")
    with torch.inference_mode():
        got = torch.jit.load(ts["path"])(x).numpy()
    assert np.abs(got - reference).max() <= 1e-4

    onx = export.export_model("local", kind, "onnx", tmp_path / "m.onnx")
    got = ort.InferenceSession(onx["path"], providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - reference).max() <= 1e-4

    export.export_model("local", kind, "zip", tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert set(export.ARCHIVE_MEMBERS) <= set(zf.namelist())
        assert zf.read("concepts.txt").decode().split() == row["concepts"]
    reloaded = export.load_archive(tmp_path / "m.zip", expect=(kind, TEMPLATE))
    again = reloaded.embed(images) if kind == "embedder" else reloaded.predict(images)
    np.testing.assert_allclose(again, direct, atol=1e-6)
    new_id = export.import_archive("local", tmp_path / "m.zip")
    assert _row(str(new_id))["concepts"] == row["concepts"]


def test_export_snippet_runs(home, tmp_path):
    from core.evaluation import export

    path = export.export_model("local", "classifier", "onnx", tmp_path / "m.onnx")["path"]
    script = tmp_path / "predict.py"
    script.write_text(export.snippet(_row("classifier"), "onnx"))
    image = _val_records(_row("classifier"))[0]["path"]
    out = subprocess.run([sys.executable, str(script), path, image], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert image in out.stdout and any(c in out.stdout for c in _row("classifier")["concepts"])


def test_archive_refusals(home, tmp_path):
    import torch

    from core.evaluation import export

    data = export.archive_bytes(_row("classifier"))
    with pytest.raises(UserError, match="cannot be loaded into embedder/Clarifai_ResNext"):
        export.unpack_archive(data, tmp_path / "a", expect=("embedder", "Clarifai_ResNext"))
    with pytest.raises(UserError, match="not a zip"):
        export.unpack_archive(b"PK nope", tmp_path / "b")

    def repack(drop: str, extra: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
            for name in src.namelist():
                if name != drop:
                    dst.writestr(name, src.read(name))
            for name, blob in extra.items():
                dst.writestr(name, blob)
        return buf.getvalue()

    with pytest.raises(UserError, match="weights are missing"):
        export.unpack_archive(repack("weights.safetensors", {}), tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("this pickle runs code",))

    evil = io.BytesIO()
    torch.save({"w": torch.zeros(1), "payload": Evil()}, evil)
    with pytest.raises(UserError, match="pickle that carries code"):
        export.unpack_archive(repack("weights.safetensors", {"weights.pt": evil.getvalue()}), tmp_path / "d")

    with pytest.raises(UserError, match="do not belong to template"):  # tensors, but not this network's
        plain = io.BytesIO()
        torch.save({"w": torch.zeros(3)}, plain)
        export.unpack_archive(repack("weights.safetensors", {"weights.pt": plain.getvalue()}), tmp_path / "e")

    with pytest.raises(UserError, match="not valid JSON"):
        export.unpack_archive(repack("config.json", {"config.json": b"{oops"}), tmp_path / "f")


def test_cli_models_evaluate_predict_export(home, tmp_path, capsys):
    """The commands as a user runs them: the first through ``python -m core`` in a process of its own (the entry point,
    its exit code and output), the rest through the same ``main`` in this process (each process would pay torch's
    import again)."""
    from core.cli import main

    env = {"DEEPTRAIN_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    listed = subprocess.run([sys.executable, "-m", "core", "models", "--json"], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert {"classifier", "embedder"} <= {m["name"] for m in json.loads(listed.stdout)}

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli("evaluate", "classifier", "--json")
    assert code == 0, err
    figures = json.loads(out)
    for key in ("accuracy", "top5", "macro_roc_auc", "per_concept", "best_f1", "confusion", "curves", "misclassified"):
        assert key in figures
    image = _val_records(_row("classifier"))[0]["path"]
    code, out, _ = cli("predict", "classifier", image, "--json")
    pred = json.loads(out)
    assert code == 0 and pred[0]["image"] == image and pred[0]["concepts"]
    bad = tmp_path / "x.png"
    bad.write_text("not a png")
    code, _, err = cli("predict", "classifier", str(bad), "--json")
    assert code == 2 and "not an image" in err and "Traceback" not in err
    out_zip = tmp_path / "m.zip"
    assert cli("export", "classifier", "--format", "zip", "--out", str(out_zip))[0] == 0 and out_zip.is_file()
    code, _, err = cli("evaluate", "nope", "--json")
    assert code == 2 and "not found" in err


def test_report_is_self_contained(home):
    from core.evaluation.report import build_report

    for name in ("classifier", "embedder"):
        text = build_report("local", name)
        assert "<script" in text and "Plotly" in text
        assert not re.search(r"<script[^>]*\bsrc=", text)  # plotly.js inlined, nothing fetched from the network
        assert not re.search(r"<(img|link)[^>]*(src|href)=['\"]https?:", text)
    from core.evaluation import service

    if service.evaluate("local", "classifier")["misclassified"]:
        assert "<img src='data:image/jpeg;base64," in build_report("local", "classifier")  # misclassified gallery
    assert "data:image\\u002fjpeg;base64," in build_report("local", "embedder")  # hover thumbnails (JSON-escaped)


def test_missing_and_corrupt_weights(home, tmp_path):
    """Last: damages a copy of the classifier's folder registered as another model."""
    import shutil

    from core.evaluation import service
    from core.evaluation.predict import predict
    from core.store.models import register_model

    row = _row("classifier")
    copy = tmp_path / "copy"
    shutil.copytree(row["path"], copy)
    register_model(owner="local", name="damaged", kind=row["kind"], template=row["template"], params=row["params"],
                   concepts=row["concepts"], preprocess=row["preprocess"], path=copy, dataset_id=row["dataset_id"],
                   dataset_version=row["dataset_version"])
    image = _val_records(row)[0]["path"]
    (copy / "weights.safetensors").write_bytes(b"garbage that is not safetensors")
    with pytest.raises(UserError, match="weights.safetensors"):
        predict("local", "damaged", [image])
    (copy / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="weights file .* is missing"):
        service.evaluate("local", "damaged", refresh=True)


def test_compare_before_and_after_a_fix_on_the_dataset_as_it_is_now(tmp_path):
    """Models of two versions of one dataset (retrained after fixing labels) compare on the dataset as it is now;
    models of different datasets are refused."""
    import shutil

    from core.data import service as datasets
    from core.data.importer import import_dataset
    from core.evaluation import service
    from core.store.models import get_model, register_model
    from core.training import train
    from tests.conftest import caltech_slice
    from tests.model_support import PARAMS, TEMPLATE

    import_dataset("local", str(caltech_slice(tmp_path / "src", per_class=6)), "fixme", workers=1)
    train({"owner": "local", "dataset": "fixme", "kind": "classifier", "template": TEMPLATE, "params": PARAMS,
           "name": "before", "seed": 0}, tmp_path / "run")
    before = get_model("local", "before")
    item = datasets.dataset_records("local", "fixme")[0]
    version = datasets.set_item_labels("local", item["item_id"], ["anchor"] if item["labels"] != ["anchor"]
                                       else ["ant"])
    assert version == before["dataset_version"] + 1
    shutil.copytree(before["path"], tmp_path / "after")  # the same weights: the figures must then be the same
    for f in ("evaluation.json", "evaluation.npz"):
        (tmp_path / "after" / f).unlink(missing_ok=True)
    register_model(owner="local", name="after", kind="classifier", template=TEMPLATE, params=before["params"],
                   concepts=before["concepts"], preprocess=before["preprocess"], path=tmp_path / "after",
                   dataset_id=before["dataset_id"], dataset_version=version)
    cmp = service.compare("local", ["before", "after"])
    assert cmp["trained_on_versions"] == [version - 1, version]
    assert [(t["model"], t["trained on version"]) for t in cmp["table"]] == [("before", version - 1),
                                                                             ("after", version)]
    assert cmp["table"][0]["accuracy"] == cmp["table"][1]["accuracy"]
    assert service.evaluate("local", "before")["dataset"]["version"] == version  # evaluated on the fixed labels

    import_dataset("local", str(caltech_slice(tmp_path / "src2", per_class=6)), "other", workers=1)
    train({"owner": "local", "dataset": "other", "kind": "classifier", "template": TEMPLATE, "params": PARAMS,
           "name": "elsewhere", "seed": 0}, tmp_path / "run2")
    with pytest.raises(UserError, match="trained on one dataset"):
        service.compare("local", ["before", "elsewhere"])
