"""Bad input: an aborted import leaves the store exactly as it was; a skipped file leaves no trace."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from core import paths
from core.data.importer import import_dataset
from core.data.limits import ImportLimits
from core.errors import UserError
from core.store import datasets as store
from core.store.engine import engine
from core.store.schema import blobs, boxes, concepts, datasets, import_reports, items, labels
from tests.conftest import caltech_slice

TABLES = (datasets, blobs, items, concepts, labels, boxes, import_reports)


def snapshot() -> dict:
    """Every dataset row and every stored file (name and bytes), plus whatever is left in staging."""
    with engine().connect() as conn:
        rows = {t.name: sorted(map(tuple, conn.execute(sa.select(t)).all()), key=repr) for t in TABLES}
    files = {}
    for sub in ("blobs", "thumbs", "staging"):
        root = paths.subdir(sub)
        files[sub] = sorted((p.relative_to(root).as_posix(), p.read_bytes()) for p in root.rglob("*") if p.is_file())
    return {"rows": rows, "files": files}


@pytest.fixture
def existing(small_folder) -> dict:
    """A store holding one good dataset named "mine", and its snapshot."""
    import_dataset("local", small_folder, "mine")
    return snapshot()


def assert_aborts(source, match: str, before: dict, name: str = "mine", **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        import_dataset("local", source, name, **kwargs)
    assert snapshot() == before
    return str(info.value)


def _jpeg_bytes(src: Path) -> bytes:
    return next(iter(sorted(src.rglob("*.jpg")))).read_bytes()


def _zip(path: Path, members: dict[str, bytes], infos: list[zipfile.ZipInfo] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info in infos:
            zf.writestr(info, b"target" if stat.S_ISLNK(info.external_attr >> 16) else b"x")
    return path


def _good_members(src: Path) -> dict[str, bytes]:
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*.jpg"))}


# ------------------------------------------------------------------------------------------------ archives

def test_zip_path_traversal(tmp_path, small_folder, existing):
    z = _zip(tmp_path / "a.zip", {**_good_members(small_folder), "../evil/x.jpg": _jpeg_bytes(small_folder)})
    assert "../evil/x.jpg" in assert_aborts(z, "escapes the archive", existing)
    assert not (tmp_path / "evil").exists()
    assert_aborts(z, "escapes the archive", existing, name="new-name")


def test_zip_absolute_path(tmp_path, small_folder, existing):
    z = _zip(tmp_path / "a.zip", {**_good_members(small_folder), "/tmp/abs/x.jpg": _jpeg_bytes(small_folder)})
    assert "/tmp/abs/x.jpg" in assert_aborts(z, "absolute path", existing)


def test_zip_symlink(tmp_path, small_folder, existing):
    link = zipfile.ZipInfo("accordion/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "a.zip", _good_members(small_folder), [link])
    assert "accordion/link.jpg" in assert_aborts(z, "symbolic link", existing)


def test_zip_bomb_unpacked_size(tmp_path, small_folder, existing):
    z = _zip(tmp_path / "bomb.zip", {**_good_members(small_folder), "accordion/zeros.bin": b"\0" * 5_000_000})
    assert z.stat().st_size < 200_000
    assert_aborts(z, r"over the limit of 1,000,000 bytes \(zip bomb\?\)", existing,
                  limits=ImportLimits(max_unpacked_bytes=1_000_000))


def test_zip_lying_header_counted_while_unpacking(tmp_path, small_folder, existing):
    """A member whose header understates its size is caught by counting bytes while decompressing."""
    z = _zip(tmp_path / "liar.zip", {**_good_members(small_folder), "accordion/zeros.bin": b"\0" * 3_000_000})
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo("accordion/zeros.bin")
    # rewrite the declared uncompressed size (local header and central directory) to 10 bytes
    needle = (3_000_000).to_bytes(4, "little")
    assert data.count(needle) == 2
    data = data.replace(needle, (10).to_bytes(4, "little"))
    z.write_bytes(bytes(data))
    assert info.file_size == 3_000_000
    assert_aborts(z, "zip bomb|corrupt|declared", existing, limits=ImportLimits(max_unpacked_bytes=1_000_000))


def test_zip_too_many_files(tmp_path, small_folder, existing):
    z = _zip(tmp_path / "many.zip", _good_members(small_folder))
    assert_aborts(z, "18 members, over the limit of 5 files", existing, limits=ImportLimits(max_files=5))


def test_empty_archive(tmp_path, existing):
    z = _zip(tmp_path / "empty.zip", {})
    assert_aborts(z, "archive is empty", existing)
    only_dirs = tmp_path / "dirs.zip"
    with zipfile.ZipFile(only_dirs, "w") as zf:
        zf.writestr(zipfile.ZipInfo("cats/"), b"")
    assert_aborts(only_dirs, "archive is empty", existing)


def test_encrypted_archive(tmp_path, small_folder, existing):
    z = _zip(tmp_path / "enc.zip", {**_good_members(small_folder), "accordion/secret.jpg": b"x" * 100})
    data = bytearray(z.read_bytes())
    name = b"accordion/secret.jpg"
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        pos = data.find(sig)
        while data[pos + name_at:pos + name_at + len(name)] != name:
            pos = data.find(sig, pos + 1)
        data[pos + flag_at] |= 0x1  # the encryption flag, as `zip -e` sets it
    z.write_bytes(bytes(data))
    assert "accordion/secret.jpg" in assert_aborts(z, "encrypted", existing)


def test_truncated_archive(tmp_path, small_folder, existing):
    z = _zip(tmp_path / "full.zip", _good_members(small_folder))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(z.read_bytes()[: z.stat().st_size * 2 // 3])
    assert_aborts(cut, "not a readable zip archive", existing, fmt="zip")
    # central directory intact, a member's data damaged: caught by its CRC while unpacking
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.infolist()[3]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 10, start + 60):
        data[i] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    assert info.filename in assert_aborts(bad, "truncated or corrupt archive", existing)


# ------------------------------------------------------------------------------------------------ manifests

def _manifest_dir(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "m"
    caltech_slice(root / "img", classes=("accordion", "anchor"), per_class=3)
    return root, sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_manifest_missing_files(tmp_path, existing):
    root, files = _manifest_dir(tmp_path)
    (root / "m.csv").write_text("path,labels\n" + "".join(f"{f},a\n" for f in files) + "img/nope.jpg,a\n")
    msg = assert_aborts(root / "m.csv", "1 file\\(s\\) that do not exist", existing)
    assert f"m.csv line {len(files) + 2}" in msg and "nope" not in msg
    (root / "m.json").write_text(json.dumps([{"path": "gone.png", "labels": ["a"]}]))
    assert "gone" not in assert_aborts(root / "m.json", "do not exist, e.g. at m.json entry 0", existing)


@pytest.mark.parametrize("text, match", [
    ("file,label\nimg/a.jpg,x\n", "m.csv: the first line is not a manifest header; expected path,labels"),
    ("path,labels,colour\nimg/a.jpg,x,red\n", "expected path,labels"),
    ("path,labels\n{f0},x,extra\n", "line 2: 3 fields, the header has 2"),
    ("path,labels,split\n{f0},x,training\n", "line 2: the split is not one of train, val, test"),
    ("path,labels\n../outside.jpg,x\n", "must be relative to the manifest"),
    ("path,labels\n/etc/passwd,x\n", "must be relative to the manifest"),
    ("", "manifest is empty"),
    ("path,labels\n", "lists no files"),
])
def test_malformed_csv(tmp_path, existing, text, match):
    root, files = _manifest_dir(tmp_path)
    (root / "m.csv").write_text(text.replace("{f0}", files[0]))
    assert_aborts(root / "m.csv", match, existing)


@pytest.mark.parametrize("text, match", [
    ('[{"path": "x.jpg", "labels": ["a"]', "malformed JSON at line 1"),
    ('{"path": "x.jpg"}', "expected a JSON list"),
    ('[{"path": "{f0}", "labels": "a"}]', "labels must be a list of names"),
    ('[{"path": "{f0}", "labels": ["a"], "colour": 1}]', "entry 0: 1 unknown key\\(s\\); allowed: path, labels, split"),
])
def test_malformed_json(tmp_path, existing, text, match):
    root, files = _manifest_dir(tmp_path)
    (root / "m.json").write_text(text.replace("{f0}", files[0]))
    assert_aborts(root / "m.json", match, existing)


@pytest.mark.parametrize("label", ["", "   ", "\t"])
def test_empty_label_names(tmp_path, existing, label):
    root, files = _manifest_dir(tmp_path)
    (root / "m.csv").write_text(f"path,labels\n{files[0]},a\n{files[1]},cat;{label}\n")
    assert_aborts(root / "m.csv", "m.csv line 3: a label name is empty or only whitespace", existing)


def test_whitespace_folder_name(tmp_path, small_folder, existing):
    shutil.copytree(small_folder / "ant", small_folder / "   ")
    assert_aborts(small_folder, "folder '   '.*empty or only whitespace", existing)


def _coco(root: Path, boxes_: list[list[float]], category: int = 1) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, box in enumerate(boxes_):
        Image.new("RGB", (64, 48), (10 * i, 20, 30)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": category if i == len(boxes_) - 1 else 1, "bbox": box})
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}))
    return path


def test_coco_box_outside_image(tmp_path, existing):
    path = _coco(tmp_path / "c", [[1, 1, 10, 10], [50, 40, 20, 10]])
    msg = assert_aborts(path, "falls outside image images/1.png;", existing)
    assert "annotations[1]" in msg


def test_coco_box_outside_actual_image(tmp_path, existing):
    """Declared sizes that lie are caught against the decoded image."""
    path = _coco(tmp_path / "c", [[1, 1, 10, 10], [50, 40, 10, 5]])
    data = json.loads(path.read_text())
    for im in data["images"]:
        im["width"], im["height"] = 640, 480
    data["annotations"][1]["bbox"] = [100, 100, 50, 50]
    path.write_text(json.dumps(data))
    assert_aborts(path, "a box of images/1.png: the box falls outside image images/1.png;", existing)


def test_coco_unknown_category(tmp_path, existing):
    path = _coco(tmp_path / "c", [[1, 1, 10, 10], [2, 2, 5, 5]], category=7)
    assert_aborts(path, "annotations\\[1\\]: category_id is not the id of any of the 1 categories", existing)


# ------------------------------------------------------------------------------------------------ folders

def test_folder_symlink_outside(tmp_path, small_folder, existing):
    secret = tmp_path / "secret.jpg"
    shutil.copy(next((small_folder / "ant").iterdir()), secret)
    os.symlink(secret, small_folder / "ant" / "link.jpg")
    assert_aborts(small_folder, "ant/link.jpg: symbolic link leads outside", existing)


def test_no_valid_image(tmp_path, existing):
    src = tmp_path / "junk" / "cats"
    src.mkdir(parents=True)
    (src / "a.jpg").write_text("hello")
    (src / "b.txt").write_text("world")
    assert_aborts(tmp_path / "junk", "no valid image found \\(2 file\\(s\\) skipped", existing)


def test_failure_during_commit_leaves_nothing(tmp_path, existing, monkeypatch):
    src = caltech_slice(tmp_path / "other", classes=("barrel", "bass"), per_class=3)
    real_move = store._move_tree

    def move_then_fail(s, d, moved):
        real_move(s, d, moved)
        if d.name == "thumbs":
            raise OSError("disk full")

    monkeypatch.setattr(store, "_move_tree", move_then_fail)
    with pytest.raises(OSError, match="disk full"):
        import_dataset("local", src, "mine")
    assert snapshot() == existing


# ------------------------------------------------------------------------------------------------ skips

def test_bad_files_are_skipped_without_trace(tmp_path, small_folder, existing):
    good = sorted((small_folder / "ant").iterdir())[0].read_bytes()
    (small_folder / "ant" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (small_folder / "ant" / "garbage.jpg").write_bytes(os.urandom(2000))
    (small_folder / "ant" / "notes.txt").write_text("not an image")
    png = io.BytesIO()
    Image.new("RGB", (30, 30), (1, 2, 3)).save(png, "PNG")
    (small_folder / "ant" / "broken.png").write_bytes(png.getvalue()[:60])
    Image.new("RGB", (200, 200), (9, 9, 9)).save(small_folder / "anchor" / "huge.png")
    report = import_dataset("local", small_folder, "other", limits=ImportLimits(max_pixels=30_000))
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons.keys() == {"ant/truncated.jpg", "ant/garbage.jpg", "ant/notes.txt", "ant/broken.png",
                              "anchor/huge.png"}
    assert reasons["ant/truncated.jpg"].startswith("truncated or corrupt image")
    assert reasons["ant/garbage.jpg"].startswith("not an image")
    assert reasons["ant/notes.txt"].startswith("not an image")
    assert reasons["ant/broken.png"].startswith(("truncated or corrupt", "corrupt image header"))
    assert "over the pixel limit of 30,000" in reasons["anchor/huge.png"]
    assert report["items"] == 18
    ds = store.get_dataset("local", "other")
    assert {r["source_path"] for r in store.dataset_records(ds["id"])}.isdisjoint(reasons)
    # no new blob or thumbnail: the 18 good images were already stored by "mine"
    after = snapshot()
    assert after["files"]["blobs"] == existing["files"]["blobs"]
    assert after["files"]["thumbs"] == existing["files"]["thumbs"]
    assert after["files"]["staging"] == []
    assert [s["path"] for s in store.latest_report(ds["id"])["skipped"]] == [s["path"] for s in report["skipped"]]


def test_unsupported_format_skipped(tmp_path, small_folder):
    Image.new("RGB", (20, 20)).save(small_folder / "ant" / "pic.ico", "ICO")
    report = import_dataset("local", small_folder, "ico")
    assert report["skipped"] == [{"path": "ant/pic.ico", "reason": report["skipped"][0]["reason"]}]
    assert "ICO is not allowed" in report["skipped"][0]["reason"]


def test_a_refused_upload_is_named_as_the_person_named_it(tmp_path):
    """The page saves an upload under a temporary name; the refusal names the file the person chose."""
    saved = tmp_path / "tmpq1w2e3r4.zip"
    saved.write_bytes(b"these bytes are not a zip archive" * 10)
    with pytest.raises(UserError) as err:
        import_dataset("local", saved, "holiday", source_label="holiday.zip")
    assert "holiday.zip: not a readable zip archive" in str(err.value) and "tmpq1w2e3r4" not in str(err.value)
