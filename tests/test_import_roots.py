"""Server folders: a path typed on the Datasets page imports only from under the configured import roots, never from
the data directory, and no refusal or error tells what is on the server (existence, link targets, file contents).

Every refusal leaves the store exactly as it was. Paths from the operator's command line (no ``server_folder``) are
not limited.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from core import paths
from core.data.importer import check_allowed, import_dataset, import_roots_help
from core.errors import UserError
from core.store import datasets as store

SECRET = "s3cret-token"


@pytest.fixture(autouse=True)
def no_roots(monkeypatch):
    """Start every test with no import roots, whatever the environment running the tests says."""
    monkeypatch.delenv("DEEPTRAIN_IMPORT_ROOTS", raising=False)


def set_roots(monkeypatch, *roots: Path) -> None:
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", os.pathsep.join(str(r) for r in roots))


def stored() -> dict:
    """The datasets and every stored file of the data directory's blobs/ and thumbs/ (names and bytes)."""
    files = {}
    for sub in ("blobs", "thumbs"):
        root = paths.subdir(sub)
        files[sub] = sorted((p.relative_to(root).as_posix(), p.read_bytes()) for p in root.rglob("*") if p.is_file())
    return {"datasets": store.dataset_names("local"), "files": files}


def refused(path, match: str | None = None, **kwargs) -> str:
    """Import ``path`` as a server folder, expect a refusal, check nothing was stored; return the message."""
    before = stored()
    with pytest.raises(UserError, match=match) as info:
        import_dataset("local", path, "taken", server_folder=True, **kwargs)
    assert stored() == before
    assert "taken" not in store.dataset_names("local")
    return str(info.value)


def outside_message(path) -> str:
    """The one message for every path outside the roots, in the data directory or above it."""
    return f"{path}: not allowed. {import_roots_help()}"


# ------------------------------------------------------------------------------------------------ no roots

def test_no_roots_refuses_every_server_folder(small_folder):
    msg = refused(small_folder)
    assert store.dataset_names("local") == []
    for how in ("import_roots", "DEEPTRAIN_IMPORT_ROOTS", "settings.toml"):
        assert how in msg and how in import_roots_help()


def test_no_roots_refuses_etc_without_listing_it():
    msg = refused("/etc")
    assert msg == outside_message("/etc")
    assert store.dataset_names("local") == []


def test_no_roots_same_refusal_whether_the_path_exists(small_folder, tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    assert refused(small_folder) == outside_message(small_folder)
    assert refused(missing) == outside_message(missing)


def test_roots_from_settings_file(small_folder):
    (paths.home() / "settings.toml").write_text(f"import_roots = [{json.dumps(str(small_folder.parent))}]\n")
    assert str(small_folder.parent) in import_roots_help()
    assert import_dataset("local", small_folder, "from-file", server_folder=True)["items"] == 18


# ------------------------------------------------------------------------------------------------ roots

def test_folder_under_a_root_imports(small_folder, monkeypatch):
    set_roots(monkeypatch, small_folder.parent)
    assert check_allowed(small_folder) == small_folder.resolve()
    assert import_dataset("local", small_folder, "ok", server_folder=True)["items"] == 18
    assert store.dataset_names("local") == ["ok"]


def test_operator_paths_are_not_limited(small_folder, tmp_path, monkeypatch):
    assert import_dataset("local", small_folder, "cli-no-roots")["items"] == 18
    set_roots(monkeypatch, tmp_path / "elsewhere")
    assert import_dataset("local", small_folder, "cli-outside")["items"] == 18


def test_outside_the_roots_refused(small_folder, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    set_roots(monkeypatch, root)
    assert refused(small_folder) == outside_message(small_folder)
    assert refused(root / ".." / "src") == outside_message(root / ".." / "src")
    assert store.dataset_names("local") == []


def test_outside_refusal_same_whether_the_path_exists(small_folder, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    set_roots(monkeypatch, root)
    missing = tmp_path / "nothing-here"
    assert refused(small_folder).replace(str(small_folder), "PATH") == refused(missing).replace(str(missing), "PATH")
    # a missing path under a root passes the check; the import then says it is missing
    assert check_allowed(root / "later") == (root / "later").resolve()
    refused(root / "later", "no such file or folder")


def test_etc_refused_before_reading_it(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    set_roots(monkeypatch, root)
    msg = refused("/etc")
    assert msg == outside_message("/etc")  # names the roots, nothing of /etc
    assert str(root) in msg
    assert store.dataset_names("local") == []


# ------------------------------------------------------------------------------------------------ data directory

@pytest.fixture
def studio_under_root(tmp_path, monkeypatch, small_folder) -> dict:
    """roots=[<tmp>/srv], home=<tmp>/srv/studio/data holding one dataset, photos at <tmp>/srv/photos."""
    srv = tmp_path / "srv"
    home = srv / "studio" / "data"
    monkeypatch.setenv("DEEPTRAIN_HOME", str(home))
    set_roots(monkeypatch, srv)
    photos = shutil.copytree(small_folder, srv / "photos")
    assert import_dataset("local", photos, "photos", server_folder=True)["items"] == 18
    assert any(paths.subdir("blobs").rglob("*"))
    return {"srv": srv, "home": home, "photos": photos}


@pytest.mark.parametrize("where", ["studio/data/blobs", "studio/data/thumbs", "studio/data", "studio", "."])
def test_data_directory_refused_even_under_a_root(studio_under_root, where):
    target = studio_under_root["srv"] / where
    assert refused(target) == outside_message(target)
    assert store.dataset_names("local") == ["photos"]


def test_data_directory_refused_through_a_link(studio_under_root):
    link = studio_under_root["photos"] / "stored"
    os.symlink(studio_under_root["home"] / "blobs", link)
    assert refused(link) == outside_message(link)
    assert store.dataset_names("local") == ["photos"]


# ------------------------------------------------------------------------------------------------ links

def test_link_out_of_a_root_refused(small_folder, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    set_roots(monkeypatch, root)
    os.symlink(small_folder, root / "shortcut")
    os.symlink(tmp_path / "gone", root / "dangling")
    assert refused(root / "shortcut") == outside_message(root / "shortcut")
    assert refused(root / "dangling") == outside_message(root / "dangling")
    assert str(small_folder) not in refused(root / "shortcut")
    assert store.dataset_names("local") == []


def test_root_given_through_a_link(small_folder, tmp_path, monkeypatch):
    os.symlink(small_folder.parent, tmp_path / "alias")
    set_roots(monkeypatch, tmp_path / "alias")
    assert import_dataset("local", small_folder, "via-alias", server_folder=True)["items"] == 18


def test_link_inside_the_folder_does_not_name_its_target(small_folder, tmp_path, monkeypatch):
    set_roots(monkeypatch, small_folder.parent)
    secret_dir = tmp_path / f"{SECRET}-dir"
    secret_dir.mkdir()
    shutil.copy(next((small_folder / "ant").iterdir()), secret_dir / "private.jpg")
    os.symlink(secret_dir / "private.jpg", small_folder / "ant" / "link.jpg")
    msg = refused(small_folder, "ant/link.jpg: symbolic link leads outside the imported folder")
    assert SECRET not in msg and "private.jpg" not in msg and "inside it" in msg
    assert store.dataset_names("local") == []


# ------------------------------------------------------------------------------------------------ file contents

def test_csv_header_not_quoted(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    set_roots(monkeypatch, root)
    (root / "notes.txt").write_text("s3cret-header,xyz\nline two,abc\n")
    msg = refused(root / "notes.txt", "notes.txt: .*expected path,labels", fmt="csv")
    assert "s3cret" not in msg and "xyz" not in msg and "line two" not in msg
    assert store.dataset_names("local") == []


@pytest.mark.skipif(not os.access("/etc/passwd", os.R_OK), reason="no readable /etc/passwd")
def test_etc_passwd_not_quoted(monkeypatch):
    set_roots(monkeypatch, "/etc")
    first = Path("/etc/passwd").read_text(encoding="utf-8", errors="replace").splitlines()[0]
    msg = refused("/etc/passwd", "passwd: .*expected path,labels", fmt="csv")
    for shown in (first, first.lower(), first.split(":")[0] + ":"):
        assert shown not in msg
    assert store.dataset_names("local") == []


def _images(root: Path, n: int = 2) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (64, 48), (40 * i, 20, 30)).save(root / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> str:
    return json.dumps({"images": images, "annotations": annotations, "categories": categories})


_IM = [{"id": 0, "file_name": "img/0.png", "width": 64, "height": 48}]
_CAT = [{"id": 1, "name": f"{SECRET}-cat"}]
CONTENT_CASES = [
    ("m.csv", f"path,labels,split\nimg/0.png,a,{SECRET}\n", "m.csv line 2: the split is not one of"),
    ("m.csv", f"path,labels\n/{SECRET}/x.png,a\n", "m.csv line 2: the path must be relative"),
    ("m.csv", f"path,labels\nimg/{SECRET}.png,a\n", r"1 file\(s\) that do not exist, e.g. at m.csv line 2"),
    ("m.csv", "path,labels,split\nimg/0.png,a,train\nimg/0.png,a,val\n",
     "m.csv line 3: img/0.png is listed again with another split than at m.csv line 2"),
    ("m.csv", f"path,labels\nimg/0.png,{SECRET};  \n", "m.csv line 2: a label name is empty"),
    ("m.json", json.dumps([{"path": "img/0.png", "labels": ["a"], SECRET: 1}]),
     r"m.json entry 0: 1 unknown key\(s\); allowed: path, labels, split"),
    ("m.json", json.dumps([{"path": "img/0.png", "labels": [424242]}]), "m.json entry 0: a label is not text"),
    ("m.json", json.dumps([{"path": f"{SECRET}.png", "labels": ["a"]}]), "do not exist, e.g. at m.json entry 0"),
    ("c.json", _coco([*_IM, {"id": 1, "file_name": f"{SECRET}.png"}], [], _CAT),
     r"c.json names 1 image file\(s\) that do not exist, e.g. at images\[1\]"),
    ("c.json", _coco([{**_IM[0], "split": SECRET}], [], _CAT), r"images\[0\]: the split is not one of"),
    ("c.json", _coco(_IM, [{"image_id": 0, "category_id": 424242, "bbox": [1, 1, 5, 5]}], _CAT),
     r"annotations\[0\]: category_id is not the id of any of the 1 categories"),
    ("c.json", _coco(_IM, [{"image_id": 424242, "category_id": 1, "bbox": [1, 1, 5, 5]}], _CAT),
     r"annotations\[0\]: image_id is not the id of any of the 1 images"),
    ("c.json", _coco(_IM, [{"image_id": 0, "category_id": 1, "bbox": [1, 1, 424242]}], _CAT),
     r"annotations\[0\]: bbox must be a list of four numbers"),
    ("c.json", _coco(_IM, [{"image_id": 0, "category_id": 1, "bbox": [1, 1, 0, 424242]}], _CAT),
     r"annotations\[0\]: the box has no area"),
    ("c.json", _coco(_IM, [{"image_id": 0, "category_id": 1, "bbox": [60, 40, 424242, 5]}], _CAT),
     r"annotations\[0\]: the box falls outside image img/0.png"),
]


@pytest.mark.parametrize("name, text, match", CONTENT_CASES)
def test_manifest_errors_do_not_quote_content(tmp_path, monkeypatch, name, text, match):
    root = tmp_path / "root"
    _images(root)
    set_roots(monkeypatch, root)
    (root / name).write_text(text)
    fmt = "coco" if name == "c.json" else "auto"
    msg = refused(root / name, match, fmt=fmt)
    assert SECRET not in msg and "424242" not in msg
    assert store.dataset_names("local") == []


def test_split_list_lines_not_quoted(small_folder, monkeypatch):
    set_roots(monkeypatch, small_folder.parent)
    (small_folder / "train.txt").write_text(f"ant/{SECRET}.jpg\n")
    msg = refused(small_folder, r"train.txt names 1 file\(s\) that do not exist in the folder, e.g. on line 1")
    assert SECRET not in msg
    assert store.dataset_names("local") == []


# ------------------------------------------------------------------------------------------------ help

def test_help_names_the_roots(tmp_path, monkeypatch):
    set_roots(monkeypatch, tmp_path / "a", tmp_path / "b")
    text = import_roots_help()
    assert str(tmp_path / "a") in text and str(tmp_path / "b") in text and "data directory" in text
