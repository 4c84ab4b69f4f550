"""Datasets: importing real images, the records other areas read, editing, splits, duplicates."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from core import paths
from core.data.importer import import_dataset, resplit
from core.data.split import stratified_split
from core.errors import UserError
from core.store import datasets as store
from tests.conftest import CALTECH, caltech_slice


def _files(sub: str) -> list[Path]:
    return sorted(p for p in paths.subdir(sub).rglob("*") if p.is_file())


def test_folder_import_records(small_folder):
    report = import_dataset("local", small_folder, "small")
    assert report["dataset"] == "small" and report["version"] == 1 and report["items"] == 18
    assert report["concepts"] == {"accordion": 6, "anchor": 6, "ant": 6}
    assert report["splits"] == {"train": 15, "val": 3, "test": 0}
    assert report["skipped"] == [] and report["duplicates"] == 0
    assert any("Studio_EfficientNetLite0_Transfer" in w for w in report["warnings"])

    ds = store.get_dataset("local", "small")
    assert ds["version"] == 1 and ds["items"] == 18
    recs = store.dataset_records(ds["id"])
    assert [r["item_id"] for r in recs] == sorted(r["item_id"] for r in recs)
    for r in recs:
        with Image.open(r["path"]) as im:
            assert im.mode == "RGB" and im.size == (r["width"], r["height"])
        assert len(r["labels"]) == 1 and r["split"] in ("train", "val") and r["boxes"] == []
        assert Path(store.thumbnail_path(r["item_id"])).is_file()
    assert store.dataset_concepts(ds["id"]) == ["accordion", "anchor", "ant"]
    assert store.eval_split(ds["id"]) == "val"
    assert len(store.dataset_records(ds["id"], "val")) == 3
    assert [d["name"] for d in store.list_datasets("local")] == ["small"]
    assert store.list_datasets("someone-else") == []
    with pytest.raises(UserError, match="small"):
        store.get_dataset("local", "nope")


def test_grayscale_stored_as_rgb_and_counted(tmp_path):
    src = caltech_slice(tmp_path / "src", classes=("accordion", "anchor"), per_class=3)
    Image.open(next((src / "anchor").iterdir())).convert("L").save(src / "anchor" / "gray.jpg", quality=90)
    report = import_dataset("local", src, "g")
    assert report["color"]["grayscale"] >= 1
    ds = store.get_dataset("local", "g")
    rec = next(r for r in store.dataset_records(ds["id"]) if r["source_path"] == "anchor/gray.jpg")
    with Image.open(rec["path"]) as im:
        assert im.mode == "RGB"


def test_exif_orientation_applied(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir(parents=True)
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(src / "a" / "rot.jpg", exif=exif.tobytes())
    Image.new("RGB", (30, 30), (0, 0, 255)).save(src / "b" / "plain.png")
    import_dataset("local", src, "o")
    recs = {r["source_path"]: r for r in store.dataset_records(store.get_dataset("local", "o")["id"])}
    assert (recs["a/rot.jpg"]["width"], recs["a/rot.jpg"]["height"]) == (20, 40)
    with Image.open(recs["a/rot.jpg"]["path"]) as im:
        assert im.size == (20, 40)
    assert recs["b/plain.png"]["path"].endswith(".png")


def test_caltech_extensionless_jpeg_is_kept(tmp_path, caltech):
    src = tmp_path / "src" / "BACKGROUND_Google"
    src.mkdir(parents=True)
    shutil.copy(caltech / "101_ObjectCategories" / "BACKGROUND_Google" / "tmp", src / "tmp")
    shutil.copy(caltech / "101_ObjectCategories" / "BACKGROUND_Google" / "image_0001.jpg", src / "image_0001.jpg")
    report = import_dataset("local", tmp_path / "src", "bg")
    assert report["items"] == 2 and report["skipped"] == []


def test_caltech_split_lists_kept(tmp_path, caltech):
    root = tmp_path / "c"
    caltech_slice(root / "101_ObjectCategories", classes=("accordion", "ant"), per_class=10)
    present = {f"{p.parent.name}/{p.name}" for p in (root / "101_ObjectCategories").rglob("*.jpg")}
    for name in ("train.txt", "test.txt"):
        lines = [ln for ln in (caltech / name).read_text().split() if ln in present]
        (root / name).write_text("\n".join(lines) + "\n")
    report = import_dataset("local", root, "lists")
    assert report["splits"]["val"] == 0 and report["splits"]["test"] > 0
    ds = store.get_dataset("local", "lists")
    assert store.eval_split(ds["id"]) == "test"
    test_lines = set((root / "test.txt").read_text().split())
    assert {r["source_path"] for r in store.dataset_records(ds["id"], "test")} == test_lines


def test_split_folders_kept(tmp_path):
    src = tmp_path / "src"
    for k, (split, n) in enumerate((("train", 4), ("val", 2), ("test", 2))):
        for concept, colour in (("red", (255, 0, 40 * k)), ("blue", (40 * k, 0, 255))):
            (src / split / concept).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16 + i, 16), colour).save(src / split / concept / f"{i}.png")
    report = import_dataset("local", src, "s")
    assert report["splits"] == {"train": 8, "val": 4, "test": 4}
    assert report["concepts"] == {"blue": 8, "red": 8}


def test_stratified_split_is_reproducible_and_stratified():
    keys = [f"k{i}" for i in range(100)]
    labels = [["a"]] * 50 + [["b"]] * 30 + [["c"]] * 20
    one = stratified_split(keys, labels, 0.2, seed=3)
    assert one == stratified_split(keys, labels, 0.2, seed=3)
    assert one != stratified_split(keys, labels, 0.2, seed=4)
    per = Counter((lab[0], s) for lab, s in zip(labels, one))
    assert (per[("a", "val")], per[("b", "val")], per[("c", "val")]) == (10, 6, 4)
    # order-independent: shuffling the input gives each key the same split
    order = list(reversed(range(100)))
    again = stratified_split([keys[i] for i in order], [labels[i] for i in order], 0.2, seed=3)
    assert {keys[i]: s for i, s in zip(order, again)} == dict(zip(keys, one))
    # groups stay together
    groups = [f"g{i // 5}" for i in range(100)]
    grouped = stratified_split(keys, labels, 0.2, seed=0, groups=groups)
    for g in set(groups):
        assert len({s for s, gg in zip(grouped, groups) if gg == g}) == 1


def test_duplicates_stored_once(tmp_path, caltech):
    src = caltech_slice(tmp_path / "src", classes=("accordion", "anchor"), per_class=3)
    first = next(iter(sorted((src / "accordion").iterdir())))
    shutil.copy(first, src / "accordion" / "copy.jpg")
    shutil.copy(first, src / "anchor" / "also.jpg")
    report = import_dataset("local", src, "dup")
    assert report["items"] == 6 and report["duplicates"] == 2
    group = report["duplicate_groups"][0]
    assert sorted(group["paths"]) == sorted(["accordion/copy.jpg", "anchor/also.jpg", f"accordion/{first.name}"])
    assert group["labels"] == ["accordion", "anchor"]  # one item, both labels
    blobs_before = _files("blobs")
    assert report["new_bytes"] == sum(p.stat().st_size for p in blobs_before)
    # a second dataset of the same images reuses the blobs
    assert import_dataset("local", src, "dup2")["new_bytes"] == 0
    assert _files("blobs") == blobs_before
    # re-importing into the same dataset adds nothing new
    with pytest.raises(UserError, match="already in dataset"):
        import_dataset("local", src, "dup")
    # adding one new image to it: a new version with that image; the rest reported as already there
    Image.new("RGB", (20, 20), (1, 2, 3)).save(src / "anchor" / "new.png")
    again = import_dataset("local", src, "dup")
    assert again["version"] == 2 and again["items"] == 1 and again["duplicates"] == 8
    assert store.get_dataset("local", "dup")["items"] == 7


def test_edit_labels_rename_merge_delete(small_folder):
    import_dataset("local", small_folder, "e")
    ds = store.get_dataset("local", "e")
    recs = store.dataset_records(ds["id"])
    item = recs[0]["item_id"]
    assert store.set_item_labels(item, ["accordion", " music "]) == 2
    assert store.get_item(item)["labels"] == ["accordion", "music"]
    with pytest.raises(UserError, match="empty"):
        store.set_item_labels(item, ["  "])
    assert store.rename_concept(ds["id"], "music", "instrument") == 3
    assert "instrument" in store.dataset_concepts(ds["id"])
    assert store.rename_concept(ds["id"], "anchor", "ant") == 4  # merge
    counts = store.concept_counts(ds["id"])
    assert counts["ant"] == 12 and "anchor" not in counts
    blob_count = len(_files("blobs"))
    store.delete_items(ds["id"], [recs[-1]["item_id"]])
    assert len(_files("blobs")) == blob_count - 1
    assert store.get_dataset("local", "e")["version"] == 5 and store.get_dataset("local", "e")["items"] == 17
    counts = resplit("local", "e", 0.5, seed=1)
    assert counts["val"] > 0 and counts["train"] > 0
    store.delete_dataset(store.get_dataset("local", "e")["id"])
    assert _files("blobs") == [] and _files("thumbs") == []
    assert store.list_datasets("local") == []


def test_multilabel_csv_and_json(tmp_path, caltech):
    src = caltech_slice(tmp_path / "m" / "img", classes=("accordion", "anchor"), per_class=4)
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in src.rglob("*.jpg"))
    lines = ["path,labels,split"] + [f"{f},{'music;metal' if i % 2 else 'music'},{'val' if i == 0 else 'train'}"
                                     for i, f in enumerate(files)]
    (tmp_path / "m" / "manifest.csv").write_text("\n".join(lines) + "\n")
    report = import_dataset("local", tmp_path / "m" / "manifest.csv", "csv")
    assert report["concepts"] == {"metal": 4, "music": 8}
    assert report["splits"] == {"train": 7, "val": 1, "test": 0}
    recs = store.dataset_records(store.get_dataset("local", "csv")["id"])
    assert sum(1 for r in recs if r["labels"] == ["metal", "music"]) == 4

    (tmp_path / "m" / "list.json").write_text(json.dumps([{"path": f, "labels": ["x", "y"]} for f in files[:3]]))
    report = import_dataset("local", tmp_path / "m" / "list.json", "js")
    assert report["concepts"] == {"x": 3, "y": 3} and report["items"] == 3


def test_coco_boxes(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(4):
        Image.new("RGB", (64, 48), (i * 40, 100, 50)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 5, 20, 10]})
    anns.append({"id": 9, "image_id": 0, "category_id": 2, "bbox": [30, 20, 34, 28]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    report = import_dataset("local", root / "ann.json", "det", val_fraction=0.0)
    assert report["format"] == "coco" and report["items"] == 4
    recs = store.dataset_records(store.get_dataset("local", "det")["id"])
    first = next(r for r in recs if r["source_path"] == "images/0.png")
    assert first["labels"] == ["cat", "dog"]
    assert first["boxes"] == [{"concept": "cat", "x": 4.0, "y": 5.0, "w": 20.0, "h": 10.0},
                              {"concept": "dog", "x": 30.0, "y": 20.0, "w": 34.0, "h": 28.0}]


def test_zip_import(tmp_path, small_folder):
    archive = shutil.make_archive(str(tmp_path / "upload"), "zip", small_folder)
    report = import_dataset("local", archive, "z")
    assert report["items"] == 18 and len(report["concepts"]) == 3
    assert list(paths.subdir("staging").iterdir()) == []


def _write_video(path: Path, codec: str, seconds: int = 3, rate: int = 10, tint: int = 0) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(seconds * rate):
            pixels = np.full((32, 32, 3), i * 8, np.uint8)
            pixels[..., 2] = tint
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("suffix, codec", [("mp4", "mpeg4"), ("webm", "libvpx")])
def test_video_frames(tmp_path, suffix, codec):
    video = tmp_path / f"clip.{suffix}"
    _write_video(video, codec)
    report = import_dataset("local", video, "v", video_fps=2.0)
    assert report["items"] == 6 and report["concepts"] == {"clip": 6}
    ds = store.get_dataset("local", "v")
    recs = store.dataset_records(ds["id"])
    item = store.get_item(recs[1]["item_id"])
    assert item["video"] == f"clip.{suffix}" and item["video_time"] == pytest.approx(0.5, abs=0.11)
    assert {r["split"] for r in recs} == {"train", "val"}  # one video alone: split by frame


def test_videos_in_concept_folders_keep_together(tmp_path):
    root = tmp_path / "vids"
    for concept in ("up", "down"):
        (root / concept).mkdir(parents=True)
        for k in range(5):
            _write_video(root / concept / f"{concept}{k}.mp4", "mpeg4", seconds=1, rate=4,
                         tint=20 * k + (120 if concept == "up" else 0))
    (root / "up" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    report = import_dataset("local", root, "vf", video_fps=4.0)
    assert [s["path"] for s in report["skipped"]] == ["up/broken.mp4"]
    assert "not a readable video" in report["skipped"][0]["reason"]
    recs = store.dataset_records(store.get_dataset("local", "vf")["id"])
    videos = store.item_videos(store.get_dataset("local", "vf")["id"])
    by_video: dict[str, set[str]] = {}
    for r in recs:
        by_video.setdefault(videos[r["item_id"]], set()).add(r["split"])
    assert len(by_video) == 10 and all(len(s) == 1 for s in by_video.values())  # no video straddles the split
    assert sum(1 for s in by_video.values() if s == {"val"}) == 2


def test_broken_single_video_aborts(tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 50)
    with pytest.raises(UserError, match="bad.webm"):
        import_dataset("local", bad, "bv")
    assert store.list_datasets("local") == []


@pytest.mark.skipif(not (CALTECH / "101_ObjectCategories").is_dir(), reason="Caltech-101 slice absent")
def test_pool_path_matches_inprocess(tmp_path):
    src = caltech_slice(tmp_path / "src", classes=("accordion", "anchor", "ant", "barrel"), per_class=15)
    pooled = import_dataset("local", src, "p", workers=2)
    single = import_dataset("local", src, "q", workers=1)
    a = [(r["source_path"], Path(r["path"]).name) for r in store.dataset_records(store.get_dataset("local", "p")["id"])]
    b = [(r["source_path"], Path(r["path"]).name) for r in store.dataset_records(store.get_dataset("local", "q")["id"])]
    assert pooled["items"] == single["items"] == 60 and a == b


def test_import_roots_limit_server_paths(small_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match="not allowed. Server folders can be imported from under"):
        import_dataset("local", small_folder, "r", server_folder=True)
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", str(small_folder.parent))
    assert import_dataset("local", small_folder, "r", server_folder=True)["items"] == 18


def test_every_mode_stored_as_rgb(tmp_path):
    import numpy as np

    src = tmp_path / "modes"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
    rgb.convert("CMYK").save(src / "a" / "cmyk.jpg")
    rgb.convert("P").save(src / "a" / "palette.gif")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(src / "a" / "transparent.png")  # fully transparent: composited on white
    rgb.convert("LA").save(src / "b" / "la.png")
    Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)).save(src / "b" / "deep.png")
    rgb.convert("1").save(src / "b" / "bits.bmp")
    rgb.save(src / "b" / "pic.webp", lossless=True)
    rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "b" / "pic.tiff")  # the same pixels would dedupe
    report = import_dataset("local", src, "modes")
    assert report["skipped"] == [] and report["items"] == 8
    for rec in store.dataset_records(store.get_dataset("local", "modes")["id"]):
        with Image.open(rec["path"]) as im:
            im.load()
            assert im.mode == "RGB", rec["source_path"]
            if rec["source_path"] == "a/transparent.png":
                assert im.getextrema() == ((255, 255), (255, 255), (255, 255))
            if rec["source_path"] == "b/pic.webp":  # lossless source stays lossless
                assert np.array_equal(np.asarray(im), np.asarray(rgb))


def test_stale_staging_pruned(small_folder):
    import os
    import time

    from core.data.importer import prune_staging

    stale = paths.subdir("staging") / "dead-import"
    (stale / "blobs").mkdir(parents=True)
    (stale / "blobs" / "x.jpg").write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    fresh = paths.subdir("staging") / "running-import"
    fresh.mkdir()
    assert prune_staging() == 1
    assert not stale.exists() and fresh.exists()
    import_dataset("local", small_folder, "after")
    assert [p.name for p in paths.subdir("staging").iterdir()] == ["running-import"]


@pytest.mark.skipif(not (CALTECH / "101_ObjectCategories").is_dir(), reason="Caltech-101 slice absent")
def test_concurrent_imports_from_threads_finish(tmp_path):
    """The web server imports in its script threads, several people at once: each import's decoding pool must
    finish (pools forked from a threaded process inherited other threads' locks and one import hung for ever)."""
    import threading

    src = caltech_slice(tmp_path / "src", classes=("accordion", "anchor", "ant", "barrel"), per_class=15)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = import_dataset("local", src, name, workers=2)["items"]
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(f"t{i}",), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), f"an import hung: {results}"
    assert results == {f"t{i}": 60 for i in range(4)}


def test_decode_pool_follows_the_process_threads():
    """A single-threaded process (the command line) decodes in forked processes; a threaded one (the web server)
    in threads: it may neither fork nor start workers that re-run its __main__ (a Streamlit page)."""
    import subprocess
    import sys

    code = ("import sys, threading; sys.path.insert(0, sys.argv[1]); from core.data import importer;"
            "a = type(importer._decode_pool(2)).__name__; e = threading.Event();"
            "t = threading.Thread(target=e.wait); t.start(); b = type(importer._decode_pool(2)).__name__;"
            "e.set(); print(a, b)")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent.parent)],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == ["ProcessPoolExecutor", "ThreadPoolExecutor"]
