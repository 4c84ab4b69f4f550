"""AppTest of the Datasets page: import a small zip from the server, see the report, browse, edit, export."""

from __future__ import annotations

import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.data.importer import import_dataset
from core.store import datasets as store
from tests.conftest import shown

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "1_Datasets.py")


def test_empty_page_renders():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("No dataset yet" in i.value for i in at.info)


def test_server_folder_without_import_roots_says_how_to_configure_one(tmp_path, small_folder):
    """No import roots: the form says how to configure one, and a typed path is refused without reading it."""
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="ds_source_kind").set_value("Path on the server").run()
    assert any("DEEPTRAIN_IMPORT_ROOTS" in c.value for c in at.caption)
    at.text_input(key="ds_name").set_value("nope")
    at.text_input(key="ds_server_path").set_value(str(small_folder)).run()
    at.button(key="ds_import_server").click().run()
    assert not at.exception
    assert any("not allowed" in e.value for e in at.error)
    assert store.list_datasets("local") == []


def test_import_zip_shows_report(tmp_path, small_folder, monkeypatch):
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", str(tmp_path))
    archive = shutil.make_archive(str(tmp_path / "upload"), "zip", small_folder)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="ds_source_kind").set_value("Path on the server").run()
    at.text_input(key="ds_name").set_value("from-zip")
    at.text_input(key="ds_server_path").set_value(archive).run()
    at.button(key="ds_import_server").click().run()
    assert not at.exception
    assert any("Imported 18 images into 'from-zip'" in shown(s.value) for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "18" and metrics["Concepts"] == "3" and metrics["Skipped"] == "0"
    assert any("Studio_EfficientNetLite0_Transfer" in shown(w.value) for w in at.warning)
    assert store.get_dataset("local", "from-zip")["items"] == 18


def test_import_refused_shows_message(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", str(tmp_path))
    bad = tmp_path / "empty.zip"
    import zipfile

    zipfile.ZipFile(bad, "w").close()
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="ds_source_kind").set_value("Path on the server").run()
    at.text_input(key="ds_name").set_value("x")
    at.text_input(key="ds_server_path").set_value(str(bad)).run()
    at.button(key="ds_import_server").click().run()
    assert not at.exception
    assert any("archive is empty" in e.value for e in at.error)
    assert store.list_datasets("local") == []


def test_browse_edit_rename_export_delete(small_folder):
    import_dataset("local", small_folder, "b")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert len(at.get("image")) == 18 + 1  # the grid and the opened image
    at.selectbox(key="ds_browse_concept").set_value("ant").run()
    assert not at.exception
    item_id = at.selectbox(key="ds_open_item").value
    assert store.get_item(item_id)["labels"] == ["ant"]
    at.text_input(key=f"ds_new_label_{item_id}").set_value("insect")
    at.button(key="ds_save_labels").click().run()
    assert not at.exception
    assert store.get_item(item_id)["labels"] == ["ant", "insect"]
    at.selectbox(key="ds_rename_old").set_value("anchor")
    at.text_input(key="ds_rename_new").set_value("accordion").run()
    at.button(key="ds_rename_btn").click().run()
    assert not at.exception
    assert "anchor" not in store.dataset_concepts(store.get_dataset("local", "b")["id"])
    at.button(key="ds_export_btn").click().run()
    assert not at.exception
    at.checkbox(key="ds_delete_confirm").check().run()
    at.button(key="ds_delete_dataset").click().run()
    assert not at.exception
    assert store.list_datasets("local") == []


def test_paging_and_filter(tmp_path):
    from tests.conftest import caltech_slice

    import_dataset("local", caltech_slice(tmp_path / "p", per_class=10), "paged")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.selectbox(key="ds_per_page").set_value(25).run()
    assert len(at.get("image")) == 25 + 1
    at.number_input(key="ds_page").set_value(2).run()
    assert len(at.get("image")) == 5 + 1
    at.selectbox(key="ds_browse_concept").set_value("ant").run()  # 10 images: back to page 1
    assert not at.exception
    assert at.number_input(key="ds_page").value == 1 and len(at.get("image")) == 10 + 1
    at.selectbox(key="ds_browse_split").set_value("val").run()
    assert not at.exception
    assert len(at.get("image")) == 2 + 1


def test_upload_saved_to_disk_then_imported(tmp_path, small_folder):
    """What the page does with an uploaded zip: written to disk in chunks, imported, removed."""
    from streamlit.proto.Common_pb2 import FileURLs
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    from core import ui

    archive = shutil.make_archive(str(tmp_path / "up"), "zip", small_folder)
    data = Path(archive).read_bytes()
    upload = UploadedFile(UploadedFileRec("f1", "My Photos.zip", "application/zip", data), FileURLs())
    upload.read(10)  # a partly read upload is saved whole
    saved = ui.save_upload(upload, "ds_upload_0", chunk_bytes=4096)
    assert saved.suffix == ".zip" and saved.read_bytes() == data
    assert upload.closed  # saved: this run's view of the bytes is released (and the file manager's copy)
    report = import_dataset("local", saved, "uploaded", source_label=upload.name)
    saved.unlink()
    assert report["items"] == 18 and report["source"] == "My Photos.zip"


def test_health_tab_finds_a_resized_copy_as_near_duplicate(small_folder):
    from PIL import Image

    # a resized copy of one photo under another concept: different bytes, the same picture
    original = sorted((small_folder / "ant").iterdir())[0]
    with Image.open(original) as img:
        img.resize((img.width * 3 // 4, img.height * 3 // 4)).save(small_folder / "anchor" / "copy_of_ant.jpg")
    import_dataset("local", small_folder, "dups")
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.button(key="ds_dup_find").click().run()
    assert not at.exception
    similar = [m for m in at.metric if m.label == "similarity"]
    assert len(similar) == 1 and float(similar[0].value) >= 0.90  # measured 0.923 for a 3/4 copy
    captions = " ".join(str(i.proto.imgs[0].caption) for i in at.get("image") if i.proto.imgs)
    assert "ant" in captions and "anchor" in captions


def test_find_similar_hands_the_item_to_visual_search(small_folder):
    import_dataset("local", small_folder, "sim")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    item_id = at.selectbox(key="ds_open_item").value
    at.button(key="ds_find_similar").click().run()
    assert not at.exception
    assert at.session_state["vs_next_item"] == item_id


def test_import_the_detection_scenes_sample(caltech):
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    at.radio(key="ds_source_kind").set_value("Sample data").run()
    at.selectbox(key="ds_sample").set_value("Detection scenes (Caltech-101)").run()
    at.text_input(key="ds_name").set_value("scenes")
    at.number_input(key="ds_scenes_count").set_value(12)
    at.number_input(key="ds_scenes_concepts").set_value(2).run()
    at.button(key="ds_import_scenes").click().run()
    assert not at.exception
    assert any("Imported 12 images into 'scenes'" in shown(s.value) for s in at.success)
    row = store.find_dataset("local", "scenes")
    assert row is not None and all(r["boxes"] for r in store.dataset_records(row["id"]))
