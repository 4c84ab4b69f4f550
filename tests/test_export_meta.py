"""Exports describe themselves: a plain client that reads nothing but the exported file reproduces the studio.

Models are trained in the test on real Caltech-101 photos (tests.model_support); the query photos are others of the
same classes, one of them grayscale, with sizes whose centre crop rounds a half.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CALTECH, ROOT
from tests.model_support import TEMPLATE, make_trained_home

PHOTOS = ("accordion/image_0011.jpg", "anchor/image_0010.jpg", "ant/image_0011.jpg")  # 160x153, 144x160, 160x107 L

# A client written from the description alone: onnxruntime, PIL and NumPy; `core` is not importable where it runs.
CLIENT = '''
import importlib.util
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

assert importlib.util.find_spec("core") is None, "the client must not reach the studio's code"
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
d = json.loads(meta["description"])
assert json.loads(meta["concepts"]) == d["concepts"] and meta["resize"] == d["resize"]
assert d["colour_order"] == "RGB" and d["input_name"] == session.get_inputs()[0].name


def photo(path):
    im = ImageOps.exif_transpose(Image.open(path))
    rgba = im.convert("RGBA")
    out = Image.new("RGB", im.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def network_input(path):
    im, s = photo(path), d["input_size"]
    assert d["resize"] == "short_side_crop", d["resize"]  # the rule these templates use
    w, h = im.size
    w, h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    im = im.resize((w, h), Image.BICUBIC)
    left, top = round((w - s) / 2), round((h - s) / 2)
    im = im.crop((left, top, left + s, top + s))
    x = (np.asarray(im, np.float32) / 255.0 - np.float32(d["mean"])) / np.float32(d["std"])
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


out = {}
for path in sys.argv[2:]:
    y = session.run(None, {d["input_name"]: network_input(path)})[0][0]
    if d["output"] == "probabilities":
        out[path] = {c: float(p) for c, p in zip(d["concepts"], y)}
    else:
        out[path] = [float(v) for v in y]
print(json.dumps({"description": d, "outputs": out}))
'''


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    return make_trained_home(tmp_path_factory, "exportmeta")


@pytest.fixture
def home(trained_home, monkeypatch) -> Path:
    monkeypatch.setenv("DEEPTRAIN_HOME", str(trained_home))
    return trained_home


@pytest.fixture(scope="module")
def clf_onnx(trained_home, tmp_path_factory) -> tuple[Path, dict]:
    """The classifier exported as ONNX once, by the command line with --json: (the file, what it printed)."""
    from core.cli import main

    out = tmp_path_factory.mktemp("onnx") / "clf.onnx"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("DEEPTRAIN_HOME", str(trained_home))
        assert main(["export", "classifier", "--format", "onnx", "--out", str(out), "--json"]) == 0
    return out, json.loads(printed.getvalue())


@pytest.fixture
def photos() -> list[str]:
    paths = [CALTECH / "101_ObjectCategories" / p for p in PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    return [str(p) for p in paths]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"DEEPTRAIN_HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", *args], check=False, capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _plain_client(tmp_path: Path, model_file: str, photos: list[str]) -> dict:
    """Run CLIENT in a fresh, isolated interpreter (-I: no PYTHONPATH, not the repository's folder)."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    done = subprocess.run([sys.executable, "-I", str(script), model_file, *photos], check=False, capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_plain_client_of_a_classifier_onnx_reproduces_predict(home, tmp_path, photos, clf_onnx):
    out, done = clf_onnx
    assert done["path"] == str(out) and done["format"] == "onnx" and done["model"] == "classifier"
    assert done["bytes"] == out.stat().st_size and done["max_diff"] <= 1e-4

    studio = json.loads(_cli(home, "predict", "classifier", *photos, "--json").stdout)
    client = _plain_client(tmp_path, str(out), photos)
    d = client["description"]
    assert d["kind"] == "classifier" and d["template"] == TEMPLATE and d["input_size"] == 64
    assert d["output"] == "probabilities" and d["output_activation"] == "softmax"
    for entry in studio:
        got = client["outputs"][entry["image"]]
        assert len(entry["concepts"]) == len(got) == len(d["concepts"])
        assert max(got, key=got.get) == entry["concepts"][0]["name"]
        for c in entry["concepts"]:
            assert abs(got[c["name"]] - c["probability"]) <= 1e-4, (entry["image"], c, got)
            if min(got[c["name"]], c["probability"]) > 1e-30:  # a 1-epoch model is sure of itself: the small ones
                assert abs(np.log(got[c["name"]]) - np.log(c["probability"])) <= 1e-3, (entry["image"], c, got)


def test_plain_client_of_an_embedder_onnx_reproduces_its_vectors(home, tmp_path, photos):
    from core.evaluation import export
    from core.search import embed as embedding
    from core.store.models import get_model

    row = get_model("local", "embedder")
    export.export_model("local", "embedder", "onnx", tmp_path / "emb.onnx")
    client = _plain_client(tmp_path, str(tmp_path / "emb.onnx"), photos)
    d = client["description"]
    studio = embedding.embed_images(embedding.load_embedder(f"model:{row['id']}"),
                                    [embedding.open_image(p) for p in photos])
    assert d["output"] == "embedding" and d["output_activation"] == "l2_normalise"
    assert d["embedding_dim"] == studio.shape[1] and f"dimension {studio.shape[1]}" in d["output_rule"]
    got = np.array([client["outputs"][p] for p in photos], np.float32)
    assert got.shape == studio.shape
    assert np.abs(got - studio).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_onnx_torchscript_and_zip_say_the_same_in_the_same_words(home, tmp_path, clf_onnx):
    import onnx
    import torch

    import core
    from core.evaluation import export
    from core.store.models import get_model

    row = get_model("local", "classifier")
    export.export_model("local", "classifier", "torchscript", tmp_path / "m.pt")
    export.export_model("local", "classifier", "zip", tmp_path / "m.zip")
    meta = {p.key: p.value for p in onnx.load(str(clf_onnx[0])).metadata_props}
    extra = dict.fromkeys(meta, "")
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    extra = {k: v.decode() for k, v in extra.items()}
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        config = json.loads(zf.read("config.json"))
    d = json.loads(meta["description"])
    assert extra == meta  # TorchScript's extra files hold exactly the ONNX metadata
    assert config["description"] == d  # and the zip's config.json the same object
    for key, value in d.items():  # each key also on its own: text as is, the rest as JSON
        assert meta[key] == (value if isinstance(value, str) else json.dumps(value)), key
    assert d["studio_version"] == core.__version__ and d["name"] == "classifier" and d["kind"] == "classifier"
    assert d["concepts"] == row["concepts"] and d["input_size"] == row["preprocess"]["image_size"]
    assert d["mean"] == row["preprocess"]["mean"] and d["std"] == row["preprocess"]["std"]
    assert d["resize"] == "short_side_crop" and "centre" in d["resize_rule"] and d["colour_order"] == "RGB"
    assert d["output"] == "probabilities" and "softmax" in d["output_rule"]
    # the description names the export, not the model: importing the zip keeps none of it
    new_id = export.import_archive("local", tmp_path / "m.zip")
    assert "description" not in json.loads((Path(get_model("local", new_id)["path"]) / "config.json").read_text())


def test_the_exports_own_example_runs_from_the_description(home, tmp_path, photos, clf_onnx):
    """predict_example for ONNX reads the description from the file (no constants copied into it) and prints the
    probabilities the studio predicts."""
    from core.evaluation import export
    from core.evaluation.predict import predict
    from core.store.models import get_model

    path = str(clf_onnx[0])
    text = export.snippet(get_model("local", "classifier"), "onnx")
    assert "from core" not in text and "custom_metadata_map['description']" in text
    script = tmp_path / "predict.py"
    script.write_text(text)
    done = subprocess.run([sys.executable, "-I", str(script), path, photos[2]], check=False, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = ast.literal_eval(done.stdout.split(" ", 1)[1])  # "PATH [(concept, probability), ...]"
    studio = predict("local", "classifier", [photos[2]], top_k=5)[0]["concepts"]
    assert [c for c, _ in printed] == [c["name"] for c in studio]
    assert all(abs(p - c["probability"]) <= 1e-4 for (_, p), c in zip(printed, studio))
