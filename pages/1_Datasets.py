"""Datasets: import (upload, server path, sample data), health report, browse, edit labels, splits, export."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core import ui
from core.data import samples, scenes
from core.data import service as datasets
from core.data.export import EXPORT_FORMATS, export_dataset
from core.data.importer import import_dataset, import_roots_help, resplit
from core.data.sources import FORMATS
from core.errors import UserError
from core.search.service import dataset_near_duplicates as near_duplicates
from core.users import can_change, has_role

st.set_page_config(page_title="Datasets", layout="wide")
st.title("Datasets")
user = ui.current_user()
SPLIT_NAMES = ("train", "val", "test")


def show_report(report: dict, where: str) -> None:
    """The health report of an import: counts, warnings, charts, duplicates and skipped files."""
    cols = st.columns(6)
    cols[0].metric("Images", f"{report['items']:,}")
    cols[1].metric("Concepts", len(report["concepts"]))
    cols[2].metric("Train / val / test", " / ".join(f"{report['splits'].get(s, 0):,}" for s in SPLIT_NAMES))
    cols[3].metric("Skipped", len(report["skipped"]))
    cols[4].metric("Duplicates", report["duplicates"])
    cols[5].metric("Grayscale / colour", f"{report['color']['grayscale']:,} / {report['color']['colour']:,}")
    for warning in report.get("warnings", []):
        st.warning(ui.md(warning))
    per_split = report.get("concepts_per_split") or {}
    rows = [{"concept": c, "split": s, "images": n} for s in SPLIT_NAMES for c, n in per_split.get(s, {}).items()]
    if rows:
        fig = px.bar(pd.DataFrame(rows), x="concept", y="images", color="split", title="Images per concept",
                     category_orders={"split": list(SPLIT_NAMES)})
        fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, key=f"ds_{where}_report_chart")
    left, right = st.columns(2)
    sizes = report["sizes"]
    left.markdown("**Image sizes (pixels)**")
    left.dataframe(pd.DataFrame({"width": sizes["width"], "height": sizes["height"]}).T, width="stretch")
    right.markdown("**Shorter side**")
    right.dataframe(pd.DataFrame([sizes["short_side"]], index=["images"]), width="stretch")
    if report.get("near_empty"):
        st.markdown(f"**Near-empty concepts:** {ui.md(', '.join(report['near_empty']))}")
    if report.get("duplicate_groups"):
        with st.expander(f"Exact duplicates ({report['duplicates']:,}), stored once"):
            st.dataframe(pd.DataFrame([{"files": ", ".join(d["paths"]), "labels": ", ".join(d["labels"]),
                                        "note": d.get("note", "")} for d in report["duplicate_groups"]]),
                         width="stretch")
    if report["skipped"]:
        with st.expander(f"Skipped files ({len(report['skipped']):,}) and why", expanded=len(report["skipped"]) < 20):
            st.dataframe(pd.DataFrame(report["skipped"]), width="stretch")


def run_import(action) -> None:
    """Run an import with a progress bar; show its report, or the refusal's message."""
    bar = st.progress(0.0, text="Starting")
    try:
        report = action(lambda fraction, message: bar.progress(min(1.0, max(0.0, fraction)), text=message))
    except UserError as exc:
        bar.empty()
        ui.show_error(exc, "Import refused, nothing was stored: ")
        return
    st.session_state["ds_last_report"] = report
    st.session_state["ds_selected"] = report["dataset"]
    bar.progress(1.0, text="Done")


# ------------------------------------------------------------------------------------------------ import
def import_tab() -> None:
    """Upload, server folder or sample data, with the report of the last import."""
    source_kind = st.radio("Source", ["Upload a file", "Path on the server", "Sample data"], horizontal=True,
                           key="ds_source_kind",
                           help="Large datasets: put them on the server and give the path instead of uploading.")
    name = st.text_input("Dataset name", key="ds_name", help="Unique per user. An existing name gets the new "
                         "images added (a new version).")
    c1, c2 = st.columns(2)
    val_fraction = c1.slider("Validation share (when the source has no splits)", 0.0, 0.5, 0.2, 0.05,
                             key="ds_val_fraction", help="Stratified per concept; train/val/test folders or a split "
                             "column in the source are kept as they are.")
    seed = int(c2.number_input("Split seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="ds_seed"))
    if source_kind == "Upload a file":
        st.caption("A zip with one folder per concept (optionally under train/ val/ test/), or with a manifest "
                   "(CSV path,labels[,split] or JSON) or a COCO file beside the images; or a video (mp4, webm).")
        # A new key once the upload is on disk: Streamlit then drops the old uploader and the bytes it held in the
        # server's memory for this session.
        upload_round = st.session_state.get("ds_upload_round", 0)
        upload_key = f"ds_upload_{upload_round}"
        upload = st.file_uploader("Zip archive or video", type=["zip", "mp4", "webm", "mov", "mkv"], key=upload_key)
        fps = st.number_input("Video frames per second", 0.1, 30.0, 1.0, 0.1, key="ds_upload_fps")
        if st.button("Import", key="ds_import_upload", type="primary", disabled=upload is None or not name):
            try:
                path = ui.save_upload(upload, upload_key)  # its bytes leave the server's memory
            except UserError as exc:
                ui.show_error(exc, "Import refused, nothing was stored: ")
                return
            st.session_state["ds_upload_round"] = upload_round + 1
            try:
                run_import(lambda p: import_dataset(user, path, name, "auto", val_fraction, seed, p, video_fps=fps,
                                                    video_label=Path(upload.name).stem,
                                                    source_label=upload.name))
            finally:
                path.unlink(missing_ok=True)
    elif source_kind == "Path on the server":
        st.caption(import_roots_help())
        server_path = st.text_input("Folder or file on the server", key="ds_server_path",
                                    help="A folder (one sub-folder per concept), a .zip, a .csv/.json manifest, a "
                                    "COCO .json, or a video.")
        fmt = st.selectbox("Format", FORMATS, key="ds_format", help="auto: from what the path is")
        fps = st.number_input("Video frames per second", 0.1, 30.0, 1.0, 0.1, key="ds_server_fps")
        if st.button("Import", key="ds_import_server", type="primary", disabled=not server_path or not name):
            run_import(lambda p: import_dataset(user, server_path.strip(), name, fmt, val_fraction, seed, p,
                                                video_fps=fps, server_folder=True))
    else:
        which = st.selectbox("Sample", ["scikit-learn digits", "Fashion-MNIST", "Detection scenes (Caltech-101)"],
                             key="ds_sample")
        if which == "Detection scenes (Caltech-101)":
            if scenes.scenes_available():
                st.caption("Caltech-101 objects pasted at random positions and scales onto real backgrounds, several "
                           "per scene, some overlapping; COCO boxes for the Visual Detector templates.")
                count = st.number_input("Scenes", 1, scenes.MAX_COUNT, scenes.DEFAULT_COUNT, 50, key="ds_scenes_count")
                concepts = st.number_input("Concepts", 1, 20, scenes.DEFAULT_CONCEPTS, 1, key="ds_scenes_concepts",
                                           help="The Caltech-101 categories with the most photos.")
                if st.button("Import scenes", key="ds_import_scenes", type="primary"):
                    run_import(lambda p: scenes.import_scenes(user, name or "scenes", int(count), int(concepts),
                                                              seed, val_fraction, p))
            else:
                st.info(f"Caltech-101 is not installed on this server: expected {scenes.caltech_root()}.")
        elif which == "Fashion-MNIST":
            if samples.fashion_mnist_available():
                per_class = st.slider("Training images per class", 10, 6000, 500, 10, key="ds_fashion_per_class",
                                      help="Test images per class: a sixth of this, as in the 60,000/10,000 split.")
                if st.button("Import Fashion-MNIST", key="ds_import_fashion", type="primary"):
                    run_import(lambda p: samples.import_fashion_mnist(user, name or "fashion-mnist", per_class,
                                                                      val_fraction=val_fraction, seed=seed,
                                                                      progress=p))
            else:
                st.info("Fashion-MNIST is not installed on this server: `apt-get install dataset-fashion-mnist`.")
        elif st.button("Import digits", key="ds_import_digits", type="primary"):
            run_import(lambda p: samples.import_digits(user, name or "digits", val_fraction, seed, p))
    if st.session_state.get("ds_last_report"):
        report = st.session_state["ds_last_report"]
        st.success(f"Imported {report['items']:,} images into {ui.md(repr(report['dataset']))} "
                   f"(version {report['version']}) in {report['seconds']:.1f} s")
        show_report(report, "import")

member = has_role(user, "member")  # a viewer browses and exports: no import, labelling or editing
if member:
    tab_import, tab_browse, tab_health, tab_manage = st.tabs(["Import", "Browse", "Health report", "Manage & export"])
    with tab_import:
        import_tab()
else:
    tab_browse, tab_health, tab_manage = st.tabs(["Browse", "Health report", "Export"])

names = datasets.dataset_names(user)
if not names:
    for tab in (tab_browse, tab_health, tab_manage):
        tab.info("No dataset yet: import one first.")
    st.stop()
if st.session_state.get("ds_selected") not in names:
    st.session_state["ds_selected"] = names[0]
with st.sidebar:
    selected = st.selectbox("Dataset", names, key="ds_selected")
ds = datasets.get_dataset(user, selected)
concepts = datasets.dataset_concepts(user, ds["id"])
mine = member and can_change(user, ds)  # a team dataset of someone else is read-only here
if not mine:
    st.sidebar.caption(f"Shared by {ui.md(ds['owner'])} with the team: you can browse, train on and search it; "
                       "only its owner can change it.")

# ------------------------------------------------------------------------------------------------ browse
with tab_browse:
    st.caption(f"{ui.md(ds['name'])} version {ds['version']}: {ds['items']:,} images, {len(concepts)} concepts")
    c1, c2, c3 = st.columns(3)
    concept = c1.selectbox("Concept", ["(all)", *concepts], key="ds_browse_concept")
    split = c2.selectbox("Split", ["(all)", *SPLIT_NAMES], key="ds_browse_split")
    per_page = c3.selectbox("Per page", [25, 50, 100], index=2, key="ds_per_page")
    concept_f = None if concept == "(all)" else concept
    split_f = None if split == "(all)" else split
    total = datasets.count_items(user, ds["id"], concept_f, split_f)
    pages = max(1, -(-total // per_page))
    if st.session_state.get("ds_page", 1) > pages:  # the filter shrank the result
        st.session_state["ds_page"] = 1
    page = int(st.number_input("Page", 1, pages, 1, key="ds_page", help=f"{total:,} images, {pages} pages"))
    shown = datasets.find_items(user, ds["id"], concept_f, split_f, offset=(page - 1) * per_page, limit=per_page)
    cols_per_row = 10
    for start in range(0, len(shown), cols_per_row):
        cols = st.columns(cols_per_row)
        for col, item in zip(cols, shown[start:start + cols_per_row]):
            col.image(item["thumb"], caption=f"#{item['item_id']} {ui.md(', '.join(item['labels']))} ({item['split']})",
                      width="stretch")
    if shown:
        st.divider()
        options = [i["item_id"] for i in shown]
        item_id = st.selectbox("Open image", options, key="ds_open_item",
                               format_func=lambda i: f"#{i}")
        item = datasets.get_item(user, item_id)
        left, right = st.columns([2, 3])
        left.image(item["path"], caption=f"{ui.md(item['source_path'])} ({item['width']}x{item['height']})")
        with right:
            st.write(f"Split: **{item['split']}**" + (f" · video {ui.md(item['video'])} at {item['video_time']:.2f} s"
                                                       if item["video"] else ""))
            if item["boxes"]:
                st.dataframe(pd.DataFrame(item["boxes"]), width="stretch")
            new_labels = st.multiselect("Labels", sorted(set(concepts) | set(item["labels"])),
                                        default=item["labels"], key=f"ds_labels_{item_id}", disabled=not mine)
            extra = st.text_input("Add a new concept", key=f"ds_new_label_{item_id}", disabled=not mine)
            b1, b2, b3 = st.columns(3)
            if b3.button("Find similar", key="ds_find_similar", help="Open Visual Search with this image as the query"):
                st.session_state[ui.NEXT_SEARCH_ITEM_KEY] = item_id
                ui.go_to_page("pages/5_Visual_Search.py", "Visual Search")
            if b1.button("Save labels", key="ds_save_labels", disabled=not mine):
                try:
                    version = datasets.set_item_labels(user, item_id, new_labels + ([extra] if extra.strip() else []))
                    st.success(f"Labels saved (dataset version {version})")
                    st.rerun()
                except UserError as exc:
                    ui.show_error(exc)
            if b2.button("Delete this image", key="ds_delete_item", disabled=not mine):
                datasets.delete_items(user, ds["id"], [item_id])
                st.rerun()
        to_delete = st.multiselect("Delete several images of this page", options, key="ds_delete_many",
                                   format_func=lambda i: f"#{i}", disabled=not mine)
        if st.button("Delete selected", key="ds_delete_many_btn", disabled=not to_delete or not mine):
            version = datasets.delete_items(user, ds["id"], to_delete)
            st.success(f"Deleted {len(to_delete)} image(s); dataset version {version}")
            st.rerun()

# ------------------------------------------------------------------------------------------------ health
with tab_health:
    counts = {s: datasets.concept_counts(user, ds["id"], s) for s in SPLIT_NAMES}
    rows = [{"concept": c, "split": s, "images": n} for s in SPLIT_NAMES for c, n in counts[s].items() if n]
    st.subheader(f"Now: version {ds['version']}")
    if rows:
        fig = px.bar(pd.DataFrame(rows), x="concept", y="images", color="split", title="Images per concept",
                     category_orders={"split": list(SPLIT_NAMES)})
        fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10))
        st.plotly_chart(fig, key="ds_health_chart")
    report = datasets.latest_report(user, ds["id"])
    if report:
        st.subheader(f"Last import (version {report.get('version')})")
        show_report(report, "health")
    st.subheader("Near-duplicates")
    st.caption("Pairs of different images whose general-purpose embeddings (EfficientNet-Lite0, cosine similarity) "
               "are at least the threshold: resized copies, crops, bursts. Exact duplicates are merged on import.")
    threshold = st.slider("Similarity threshold", 0.80, 1.0, 0.90, 0.01, key="ds_dup_threshold",
                          help="0.90 catches resized copies of small photos; raise it for stricter pairs")
    if st.button("Find near-duplicates", key="ds_dup_find"):
        with st.spinner("Embedding the images..."):
            pairs = near_duplicates(user, ds["id"], threshold=threshold)
        if pairs:
            st.write(f"{len(pairs)} pair(s) at similarity {threshold:.2f} or more")
            for pair in pairs[:50]:
                c1, c2, c3 = st.columns([2, 2, 1])
                c1.image(pair["a_path"], caption=f"#{pair['a']} {ui.md(', '.join(pair['a_concepts']))}", width=160)
                c2.image(pair["b_path"], caption=f"#{pair['b']} {ui.md(', '.join(pair['b_concepts']))}", width=160)
                c3.metric("similarity", f"{pair['score']:.3f}")
        else:
            st.success(f"No pair of images at similarity {threshold:.2f} or more.")

# ------------------------------------------------------------------------------------------------ manage
with tab_manage:
    st.subheader("Sharing")
    st.caption(f"Owner: {ui.md(ds['owner'])}. Private: only its owner sees it. Team: everyone on this server sees it "
               "and may train on it and search it, read-only.")
    ui.share_toggle(user, ds, lambda visibility: datasets.share_dataset(user, ds["id"], visibility), key="ds_share",
                    help="Everyone on this server may then browse it, train on it and search it, read-only")

    st.subheader("Rename or merge a concept")
    c1, c2, c3 = st.columns([2, 2, 1])
    old = c1.selectbox("Concept", concepts, key="ds_rename_old") if concepts else None
    new = c2.text_input("New name (an existing concept merges the two)", key="ds_rename_new")
    if c3.button("Rename", key="ds_rename_btn", disabled=not (old and new.strip() and mine)):
        try:
            version = datasets.rename_concept(user, ds["id"], old, new)
            st.success(f"Renamed {ui.md(repr(old))} to {ui.md(repr(new.strip()))} (version {version})")
            st.rerun()
        except UserError as exc:
            ui.show_error(exc)

    st.subheader("Train / validation split")
    st.caption("Stratified per concept and reproducible from the seed; test images stay in test.")
    c1, c2, c3 = st.columns([2, 1, 1])
    split_share = c1.slider("Validation share", 0.0, 0.5, 0.2, 0.05, key="ds_resplit_fraction")
    split_seed = int(c2.number_input("Seed", 0, 2**31 - 1, 0, 1, key="ds_resplit_seed"))
    if c3.button("Set the split", key="ds_resplit_btn", disabled=not mine):
        counts = resplit(user, ds["id"], split_share, split_seed)
        st.success("Split now: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))

    st.subheader("Export")
    c1, c2 = st.columns([2, 1])
    fmt = c1.radio("Form", EXPORT_FORMATS, horizontal=True, key="ds_export_format",
                   format_func={"folder": "Folder per concept", "csv": "CSV manifest", "coco": "COCO"}.get)
    if c2.button("Prepare the zip", key="ds_export_btn"):
        out = export_dataset(user, ds["id"], fmt, ui.export_path(user, f"{ds['name']}-v{ds['version']}-{fmt}.zip"))
        st.session_state["ds_export_file"] = str(out)
    export_file = st.session_state.get("ds_export_file")
    if export_file and Path(export_file).is_file():
        # read when the button is clicked, not on every rerun of the page (an export can be gigabytes)
        st.download_button(f"Download {Path(export_file).name}", lambda: Path(export_file).read_bytes(),
                           file_name=Path(export_file).name, mime="application/zip", key="ds_export_download")

    st.subheader("Delete the dataset")
    confirm = st.checkbox(f"Yes, delete {ui.md(repr(ds['name']))} and its {ds['items']:,} images",
                          key="ds_delete_confirm", disabled=not mine)
    if st.button("Delete dataset", key="ds_delete_dataset", disabled=not confirm or not mine, type="primary"):
        datasets.delete_dataset(user, ds["id"])
        st.session_state.pop("ds_selected", None)
        st.session_state.pop("ds_last_report", None)
        st.rerun()
