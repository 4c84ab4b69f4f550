"""Hostile input (issue 17): CSV injection, uploads held to the importer's rules, video limits from the header, model
archives checked against the catalog before anything is built, and the defects the importer fuzzer found
(``tests/test_fuzz_importers.py``), each with its minimal case."""

from __future__ import annotations

import csv
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core import csvsafe, paths
from core.data.importer import import_dataset
from core.errors import UserError
from core.store import datasets as store

FORMULA = ("=", "+", "-", "@", "\t", "\r")
TEMPLATE = "Studio_EfficientNetLite0_Transfer"


def _png(i: int = 0, size: tuple[int, int] = (4, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 40 % 256, 90, 200 - i)).save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and carries almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


PPM = b"P6\n2 2\n255\n" + bytes(12)  # PIL reads it; the importer does not take it


# ------------------------------------------------------------------------------------------------ CSV injection

@pytest.mark.parametrize("value", ["=cmd|'/C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "'=1", "''+1"])
def test_formula_cells_get_a_quote(value):
    assert csvsafe.cell(value) == "'" + value
    assert csvsafe.unquote(csvsafe.cell(value)) == value


@pytest.mark.parametrize("value", ["cat", "'quoted", "a=b", " =x", "", -0.5, 3, None])
def test_other_cells_are_written_as_they_are(value):
    assert csvsafe.cell(value) == value


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_quoting_is_safe_and_reversible(text):
    written = csvsafe.cell(text)
    assert not written.startswith(FORMULA)
    assert csvsafe.unquote(written) == text


HOSTILE_LABELS = ["=cmd|'/C calc'!A0", "+1", "-2", "@SUM(A1)", "'=already quoted", "'plain quote", "plain"]


def test_dataset_csv_export_neutralises_labels_and_imports_back(tmp_path):
    """Labels a spreadsheet would run are written with a quote, and the export imports back with the same labels."""
    src = tmp_path / "src"
    src.mkdir()
    manifest = []
    for i, label in enumerate(HOSTILE_LABELS):
        (src / f"{i}.png").write_bytes(_png(i))
        manifest.append({"path": f"{i}.png", "labels": [label, "ok"] if i % 2 else [label]})
    (src / "list.json").write_text(json.dumps(manifest))
    import_dataset("local", src / "list.json", "hostile")
    from core.data.export import export_dataset

    out = export_dataset("local", "hostile", "csv", tmp_path / "export.zip")
    with zipfile.ZipFile(out) as zf:
        rows = list(csv.reader(io.StringIO(zf.read("manifest.csv").decode())))
    cells = [c for row in rows for c in row]
    assert not [c for c in cells if c.startswith(FORMULA)]
    assert sorted(row[1] for row in rows[1:]) == sorted([
        "'=cmd|'/C calc'!A0", "'+1;ok", "'-2", "'@SUM(A1);ok", "''=already quoted", "'plain quote;ok", "plain"])

    import_dataset("local", out, "again")
    def labels(name: str) -> list[list[str]]:
        return sorted(sorted(r["labels"]) for r in store.dataset_records(store.get_dataset("local", name)["id"]))

    assert labels("again") == labels("hostile") == sorted(sorted(m["labels"]) for m in manifest)


def test_hand_written_manifest_quotes(tmp_path):
    """The importer removes one quote only before a formula character (core.csvsafe documents the rule)."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    (tmp_path / "m.csv").write_text("path,labels\n0.png,'=x\n1.png,''=y\n2.png,'plain\n")
    import_dataset("local", tmp_path / "m.csv", "quotes")
    got = {Path(r["source_path"]).name: r["labels"] for r in
           store.dataset_records(store.get_dataset("local", "quotes")["id"])}
    assert got == {"0.png": ["=x"], "1.png": ["'=y"], "2.png": ["'plain"]}


def test_training_metrics_csv_is_neutralised(tmp_path):
    from core.training.loop import write_metrics_csv

    write_metrics_csv(tmp_path / "metrics.csv", [{"epoch": 1, "train_loss": -0.5, "note": "=HYPERLINK(\"x\")"}])
    rows = list(csv.reader((tmp_path / "metrics.csv").open()))
    assert rows == [["epoch", "train_loss", "note"], ["1", "-0.5", "'=HYPERLINK(\"x\")"]]  # numbers stay numbers


# ------------------------------------------------------------------------------------------------ uploads

def _openers():
    from core.evaluation.drawing import draw_boxes
    from core.evaluation.predict import open_image as predict_open
    from core.search.embed import open_image as search_open

    return {"predict": lambda name, data: predict_open((name, data)),
            "search": lambda name, data: search_open((name, data)),
            "draw": lambda name, data: draw_boxes((name, data), [], [], legend=False)}


UPLOADS = [
    ("evil.ppm", PPM, "image format PPM is not allowed"),
    ("bomb.png", _png_header_only(100_000, 100_000), r"over the pixel limit .*import_max_pixels"),
    ("big.png", _png_header_only(9_000, 9_000), r"81,000,000 pixels, over the pixel limit of 64,000,000"),
    ("empty.png", b"", "empty file"),
    ("notes.png", b"just text, not an image", "not an image"),
    ("cut.png", _png(0, (40, 40))[:60], "truncated or corrupt"),
]


@pytest.mark.parametrize("which", ["predict", "search", "draw"])
@pytest.mark.parametrize("name, data, match", UPLOADS, ids=[u[0] for u in UPLOADS])
def test_uploads_are_held_to_the_importers_rules(which, name, data, match):
    with pytest.raises(UserError, match=match) as info:
        _openers()[which](name, data)
    assert str(info.value).startswith(f"{name}: ")


@pytest.mark.parametrize("which", ["predict", "search", "draw"])
def test_upload_pixel_limit_is_the_setting(which, monkeypatch):
    data = _png(1, (20, 20))
    assert _openers()[which]("ok.png", data).size == (20, 20)
    monkeypatch.setenv("DEEPTRAIN_IMPORT_MAX_PIXELS", "399")
    with pytest.raises(UserError, match=r"ok.png: 20x20 is 400 pixels, over the pixel limit of 399"):
        _openers()[which]("ok.png", data)


def test_search_upload_names_its_file():
    from core.search.embed import open_image

    upload = io.BytesIO(PPM)
    upload.name = "holiday.ppm"  # Streamlit's UploadedFile carries its name
    with pytest.raises(UserError, match="holiday.ppm: image format PPM"):
        open_image(upload)
    assert open_image(_png(2)).mode == "RGB"
    with pytest.raises(UserError, match="query.ppm: "):
        open_image(PPM, name="query.ppm")


# ------------------------------------------------------------------------------------------------ videos

def _video(path: Path, seconds: int = 3, rate: int = 10, side: int = 32) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * rate):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((side, side, 3), i * 8, np.uint8),
                                                                    format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("env, value, match", [
    ("DEEPTRAIN_IMPORT_MAX_VIDEO_SECONDS", "1.5", r"clip.mp4: lasts 3 s, over the limit of 1.5 s .*max_video_sec"),
    ("DEEPTRAIN_IMPORT_MAX_VIDEO_PIXELS", "1000", r"frames of 32x32 are 1,024 pixels, over the limit of 1,000"),
    ("DEEPTRAIN_IMPORT_MAX_VIDEO_DECODED_FRAMES", "20", r"holds 30 frames, over the limit of 20"),
])
def test_video_limits_are_checked_from_the_header(tmp_path, monkeypatch, env, value, match):
    from core.data import sources

    video = _video(tmp_path / "clip.mp4")
    decoded = []
    monkeypatch.setattr(sources, "_check_video_frame", lambda *a: decoded.append(a))
    monkeypatch.setenv(env, value)
    with pytest.raises(UserError, match=match):
        import_dataset("local", video, "clip")
    assert decoded == []  # refused before a frame was decoded
    assert store.list_datasets("local") == []
    monkeypatch.delenv(env)
    assert import_dataset("local", video, "clip")["items"] == 3 and len(decoded) == 30


def test_a_video_over_the_limits_in_a_folder_is_skipped_with_the_reason(tmp_path, monkeypatch):
    root = tmp_path / "vids"
    (root / "waves").mkdir(parents=True)
    _video(root / "waves" / "long.mp4", seconds=2, rate=4)
    (root / "waves" / "still.png").write_bytes(_png(3))
    monkeypatch.setenv("DEEPTRAIN_IMPORT_MAX_VIDEO_SECONDS", "1")
    report = import_dataset("local", root, "v")
    assert report["items"] == 1
    assert [s["path"] for s in report["skipped"]] == ["waves/long.mp4"]
    assert "import_max_video_seconds" in report["skipped"][0]["reason"]


@pytest.mark.parametrize("frame, decoded, match", [
    (SimpleNamespace(width=10_000, height=10_000, time=0.0), 1, "a frame of 10000x10000"),
    (SimpleNamespace(width=8, height=8, time=99.0), 1, "runs past 10 s"),
    (SimpleNamespace(width=8, height=8, time=None), 6, "more than 5 frames"),
])
def test_video_frames_are_checked_while_decoding_too(frame, decoded, match):
    """A header that lies (says short, small, few) is caught on the frames themselves."""
    from core.data.limits import ImportLimits
    from core.data.sources import _check_video_frame

    limits = ImportLimits(max_video_seconds=10, max_video_pixels=1_000_000, max_video_decoded_frames=5)
    with pytest.raises(UserError, match=match):
        _check_video_frame("clip.mp4", frame, decoded, limits)


# ------------------------------------------------------------------------------------------------ model archives

@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict[str, bytes]:
    """The members of a valid export of a tiny classifier (random weights, 64 px, concepts a, b, c)."""
    from core.models.io import save_model_dir
    from core.models.networks import build_network
    from core.templates import validate

    params = validate("classifier", TEMPLATE, {"pretrained_weights": "None", "image_size": 64})
    folder = tmp_path_factory.mktemp("model")
    save_model_dir(folder, build_network("classifier", TEMPLATE, params, 3),
                   {"kind": "classifier", "template": TEMPLATE, "params": params, "concepts": ["a", "b", "c"],
                    "export": {"model_name": "tiny"}, "metrics": {"top1": 0.5}})
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # stored: 17 MB of weights, deflated, takes 0.3 s
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _with_config(archive: dict[str, bytes], change) -> bytes:
    config = json.loads(archive["config.json"])
    if callable(change):
        config = change(config)
    else:
        config.update(change)
    return _zip({**archive, "config.json": json.dumps(config).encode()})


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The device of every network built while the test runs ("meta": shapes only, no memory)."""
    import torch

    from core.models import networks

    seen: list[str] = []
    for name in ("build_network", "build_on_base"):
        real = getattr(networks, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(str(torch.get_default_device()))
            return _real(*args, **kwargs)

        monkeypatch.setattr(networks, name, spy)
    return seen


def _models_stored() -> tuple[int, list[str]]:
    from core.store.engine import engine
    from core.store.schema import models

    with engine().connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(models)).scalar_one()
    return rows, sorted(p.name for p in paths.subdir("models").iterdir())


def test_a_valid_archive_imports(archive, builds):
    from core.evaluation import export
    from core.store.models import get_model

    model_id = export.import_archive("local", _with_config(archive, {"export": None}))
    row = get_model("local", model_id)
    assert row["concepts"] == ["a", "b", "c"] and row["name"] == f"imported-{TEMPLATE}"
    assert "cpu" in builds and "meta" in builds  # checked on the meta device first, then built for real
    config = json.loads((Path(row["path"]) / "config.json").read_text())
    assert config["params"]["image_size"] == 64


HOSTILE_CONFIGS = [
    ({"template": "Evil_Net"}, "template is not in the catalog"),
    ({"kind": "virus"}, "kind must be one of classifier, embedder, detector"),
    ({"params": {"image_size": 100_000}}, r"params are outside the template's bounds \(image_size: 100000"),
    ({"params": {"backdoor": 1}}, "params are outside the template's bounds .*no parameter 'backdoor'"),
    ({"params": "image_size=64"}, "params must be an object"),
    ({"kind": "embedder", "template": "Clarifai_ResNet_AngularMargin", "params": {"embeddings_size": 4096}},
     "embeddings_size: 4096 is not allowed"),
    ({"concepts": [f"c{i}" for i in range(50_001)]}, "concepts must be a list of 1 to 50,000"),
    ({"concepts": []}, "concepts must be a list of 1 to 50,000"),
    ({"concepts": ["a", 7, "c"]}, r"concepts\[1\] must be a name"),
    ({"concepts": ["a", "a", "c"]}, "concepts name a concept twice"),
    ({"num_classes": 1000}, "num_classes must equal the number of concepts"),
    ({"embedding_dim": 10**12}, "embedding_dim must be a whole number"),
    ({"preprocess": {"image_size": 10**6, "resize": "short_side_crop", "mean": [0.5] * 3, "std": [0.5] * 3}},
     r"preprocess.image_size must be a whole number from 32 to 1024"),
    ({"preprocess": {"image_size": 64, "resize": "os.system", "mean": [0.5] * 3, "std": [0.5] * 3}},
     "preprocess.resize must be short_side_crop or square"),
    ({"preprocess": {"image_size": 64, "resize": "square", "mean": [0.5] * 3, "std": [0.5, 0, 0.5]}},
     "preprocess.std must be three finite numbers above 0"),
    ({"base_model": {"id": 3, "path": "/srv/other-users/model"}}, "base is missing"),
    ({"base": {"kind": "embedder", "template": "Nope", "params": {}}}, "base.template is not in the catalog"),
    ({"base": {"kind": "detector", "template": "Studio_RetinaNet", "params": {}}}, "base.kind must be classifier"),
    ({"metrics": {"top1": {"nested": [1, 2]}}}, "metrics must be an object"),
    ({"export": {"model_name": ["not", "a", "name"]}}, "export.model_name must be a name"),
    ({"export": "yes"}, "export must be an object"),
]


@pytest.mark.parametrize("change, match", HOSTILE_CONFIGS, ids=[m.split(" ")[0] for _, m in HOSTILE_CONFIGS])
def test_a_hostile_config_is_refused_before_anything_is_built(archive, builds, change, match):
    from core.evaluation import export

    before = _models_stored()
    with pytest.raises(UserError, match=match) as info:
        export.import_archive("local", _with_config(archive, change))
    assert str(info.value).startswith("archive") and "\n" not in str(info.value)
    assert builds == []  # not even on the meta device
    assert _models_stored() == before


@pytest.mark.parametrize("change, match", [
    ({"concepts": ["a", "b", "c", "d"], "num_classes": 4}, "weights do not belong to template .* with 4 concepts"),
    ({"embedding_dim": 7}, r"embedding_dim must be the network's embedding size \(1280\)"),
    ({"base": {"kind": "embedder", "template": "general"}}, "weights do not belong"),
])
def test_weights_that_do_not_match_the_config_are_refused_unbuilt(archive, builds, change, match):
    """Concept count and embedding size against the weights: compared on the meta device, nothing allocated."""
    from core.evaluation import export

    before = _models_stored()
    with pytest.raises(UserError, match=match):
        export.import_archive("local", _with_config(archive, change))
    assert builds and set(builds) == {"meta"}
    assert _models_stored() == before


def test_hostile_archive_files(archive, builds):
    """Members that are not what they claim: no traceback, nothing stored, nothing built."""
    from core.evaluation import export

    before = _models_stored()
    cases = {
        "config.json is a list": _zip({**archive, "config.json": b"[1, 2]"}),
        "config.json nested 100,000 deep": _zip({**archive, "config.json": b"[" * 100_000 + b"]" * 100_000}),
        "weights not safetensors": _zip({**archive, "weights.safetensors": b"\xff" * 64}),
        "weights header says huge": _zip({**archive, "weights.safetensors": struct.pack("<Q", 2**62) + b"{}"}),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in archive.items():
            zf.writestr(name, data)
        zf.writestr(zipfile.ZipInfo(""), b"x")  # zipfile's own is_dir() fails on an empty name
    cases["a member without a name"] = buf.getvalue()
    damaged = bytearray(_zip(archive))  # the weights' compressed data flipped: a CRC error when read
    with zipfile.ZipFile(io.BytesIO(bytes(damaged))) as zf:
        info = zf.getinfo("weights.safetensors")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 100, start + 400):
        damaged[i] ^= 0xFF
    cases["weights damaged"] = bytes(damaged)
    for what, data in cases.items():
        with pytest.raises(UserError) as exc:
            export.import_archive("local", data)
        assert str(exc.value).startswith("archive"), (what, str(exc.value))
    assert builds == [] and _models_stored() == before


def test_predict_refuses_a_bad_upload_before_loading_the_model(archive, monkeypatch):
    from core.evaluation import export, predict, service

    model_id = export.import_archive("local", _zip(archive))
    monkeypatch.setattr(service, "load_model", lambda row: pytest.fail("loaded the model for a bad upload"))
    with pytest.raises(UserError, match="evil.ppm: image format PPM is not allowed"):
        predict.predict("local", model_id, [("ok.png", _png(1)), ("evil.ppm", PPM)])


# ------------------------------------------------------------------------------------------------ fuzzer findings

def test_zip_member_with_an_empty_name(tmp_path):
    """Found by the fuzzer: zipfile's own is_dir() raised IndexError on a member named ""."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/x.png", _png(1))
        zf.writestr(zipfile.ZipInfo(""), _png(2))
    with pytest.raises(UserError, match="member number 2 has an empty name"):
        import_dataset("local", archive, "z")


@pytest.mark.parametrize("fmt, text", [
    ("json", "[" * 100_000 + "]" * 100_000),
    ("coco", '{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "categories": []}'),
])
def test_json_nested_too_deeply(tmp_path, fmt, text):
    """Found by the fuzzer: json.loads raised RecursionError on arrays nested thousands deep."""
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(UserError, match="m.json: JSON nested too deeply"):
        import_dataset("local", tmp_path / "m.json", "deep", fmt=fmt)


@pytest.mark.parametrize("doc, match", [
    ({"categories": [{"id": [], "name": "cat"}]}, r"categories\[0\] has id \[\]; an id must be a number or a string"),
    ({"categories": [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}]}, "category ids must be unique"),
    ({"categories": [{"id": 1, "name": "cat"}], "annotations": [{"image_id": 1, "category_id": {"x": 1},
                                                                  "bbox": [0, 0, 1, 1]}]},
     "category_id is not the id of any"),
    ({"categories": [{"id": 1, "name": "cat"}], "annotations": [{"image_id": [1], "category_id": 1,
                                                                  "bbox": [0, 0, 1, 1]}]},
     "image_id is not the id of any"),
])
def test_coco_ids_that_are_not_ids(tmp_path, doc, match):
    """Found by the fuzzer: a list or object as a category id, category_id or image_id raised TypeError
    (unhashable); a repeated category id silently replaced the first."""
    (tmp_path / "0.png").write_bytes(_png(0))
    data = {"images": [{"id": 1, "file_name": "0.png"}], "annotations": []} | doc
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=match):
        import_dataset("local", tmp_path / "c.json", "coco", fmt="coco")


def test_hidden_folders_and_special_files_inside_concept_folders_are_named(tmp_path):
    """Found reading what the fuzzer's oracle had to leave out: a hidden folder inside a concept folder, a broken
    link or a pipe were left out without a word."""
    import os

    root = tmp_path / "src"
    (root / "cat" / ".thumbnails").mkdir(parents=True)
    (root / "cat" / ".thumbnails" / "t.png").write_bytes(_png(1))
    (root / "cat" / "a.png").write_bytes(_png(2))
    (root / "cat" / "gone.png").symlink_to(root / "cat" / "missing.png")
    os.mkfifo(root / "cat" / "pipe.png")
    report = import_dataset("local", root, "specials")
    assert report["items"] == 1
    assert {s["path"]: s["reason"] for s in report["skipped"]} == {
        "cat/.thumbnails": "hidden folder, not read", "cat/gone.png": "not a regular file",
        "cat/pipe.png": "not a regular file"}


@pytest.mark.parametrize("layout", ["splits", "wrapper"])
def test_files_beside_the_concept_folders_are_named(tmp_path, layout):
    """Found by the fuzzer: beside split folders, or above a folder that wraps the concept folders, a file was left
    out without a word; it is imported without a label like one beside plain concept folders (issue 22)."""
    root = tmp_path / "src"
    inner = root / ("train" if layout == "splits" else "wrap")
    for i, concept in enumerate(("cat", "dog")):
        (inner / concept).mkdir(parents=True)
        (inner / concept / f"{i}.png").write_bytes(_png(i))
    (root / "readme.png").write_bytes(_png(9))
    report = import_dataset("local", root, "strays")
    assert report["items"] == 3 and report["skipped"] == [] and report["unlabeled"] == 1
    from core.store import datasets as ds_store

    recs = ds_store.dataset_records(report["dataset_id"])
    assert [r["labels"] for r in recs if r["source_path"] == "readme.png"] == [[]]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=10)
CONFIG_FIELDS = ["kind", "template", "params", "concepts", "num_classes", "embedding_dim", "preprocess", "base",
                 "base_model", "metrics", "export"]


@settings(max_examples=200, deadline=None, database=None)
@given(changes=st.dictionaries(st.sampled_from(CONFIG_FIELDS), JSON, min_size=1, max_size=3),
       nested=st.dictionaries(st.sampled_from(["image_size", "resize", "mean", "std", "embeddings_size", "logreg",
                                               "template", "kind", "num_classes", "model_name", "path"]), JSON,
                              max_size=2),
       into=st.sampled_from(["params", "preprocess", "base", "export", "base_model"]))
def test_generated_configs_are_refused_by_name_or_accepted(changes, nested, into):
    """check_archive_config on generated values (top-level fields, and keys inside params, preprocess, base...):
    a UserError naming a field, or a config whose fields are all checked; never another exception."""
    from core.evaluation.export import check_archive_config

    config = {"kind": "classifier", "template": TEMPLATE, "params": {"image_size": 64}, "concepts": ["a", "b"],
              "preprocess": {"image_size": 64, "resize": "short_side_crop", "mean": [0.5] * 3, "std": [0.5] * 3},
              "base": {"kind": "embedder", "template": "general"}}
    config.update(changes)
    if isinstance(config.get(into), dict):
        config[into] = {**config[into], **nested}
    try:
        checked = check_archive_config(config)
    except UserError as exc:
        assert str(exc).startswith("archive") and "\n" not in str(exc)
    else:
        assert checked["concepts"] and all(isinstance(c, str) for c in checked["concepts"])
        assert 32 <= checked["preprocess"]["image_size"] <= 1024
