"""Datasets: import (upload, server path, sample data), health report, browse, edit labels, splits, export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core import jobs, ui
from core.data import atlas, labelling, quality, samples, scenes
from core.data import service as datasets
from core.data.export import EXPORT_FORMATS, export_dataset
from core.data.importer import import_dataset, import_roots_help, resplit
from core.data.sources import FORMATS
from core.errors import UserError
from core.evaluation import service as models_service
from core.models import GENERAL
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
    tab_import, tab_browse, tab_health, tab_quality, tab_map, tab_manage = st.tabs(
        ["Import", "Browse", "Health report", "Quality", "Map", "Manage & export"])
    with tab_import:
        import_tab()
else:
    tab_browse, tab_health, tab_quality, tab_map, tab_manage = st.tabs(
        ["Browse", "Health report", "Quality", "Map", "Export"])

names = datasets.dataset_names(user)
if not names:
    for tab in (tab_browse, tab_health, tab_quality, tab_map, tab_manage):
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

# ------------------------------------------------------------------------------------------------ quality
QUALITY_POLL_S = 2.0  # the progress of a running quality job is redrawn this often
KIND_NAMES = {"label": "label mistake", "outlier": "outlier", "near_duplicate": "near-duplicate"}


def shown_labels(value) -> str:
    """A row's given or suggested labels as text: a name, names joined, or a dash."""
    return "-" if value is None else ", ".join(value) if isinstance(value, list) else str(value)


def as_list(value) -> list[str]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def start_job(key: str, kind: str, config: Callable[[], dict]) -> None:
    """Queue a job of ``kind`` with ``config()`` and follow it under session state ``key`` (a refusal is shown)."""
    try:
        st.session_state[key] = jobs.submit(user, kind, config())
    except UserError as exc:
        ui.show_error(exc)
    else:
        st.rerun()  # the progress fragment's timer is set when the page runs with a job to follow


def job_outcome(prefix: str, what: str) -> None:
    """How the job followed under ``prefix + "_job"`` ended, once: its error, or the success message left for it."""
    if st.session_state.get(f"{prefix}_failed"):
        st.error(f"{what} failed: {ui.md(st.session_state.pop(f'{prefix}_failed'))}")
    if st.session_state.get(f"{prefix}_done"):
        st.success(st.session_state.pop(f"{prefix}_done"))


def follow_job(key: str, what: str) -> None:
    """The progress of the job whose id is in session state ``key`` (run inside a fragment that reruns on a timer);
    the whole page redraws once it has ended, its error kept under the key with "_failed" for "_job"."""
    job_id = st.session_state.get(key)
    if not job_id:
        return
    try:
        status = jobs.status(user, job_id)
    except UserError:
        st.session_state.pop(key, None)
        return
    if status["state"] in jobs.TERMINAL:
        st.session_state.pop(key, None)
        if status["state"] != "succeeded":
            st.session_state[key.replace("_job", "_failed")] = status.get("error") or status["state"]
        st.rerun()
    p = status["progress"]
    st.progress(float(p.get("fraction") or 0.0),
                text=f"{what} job {job_id}: {status['state']} · {ui.md(p.get('phase') or 'waiting for a worker')}")


@st.fragment(run_every=QUALITY_POLL_S if st.session_state.get("ds_q_job") else None)
def quality_progress() -> None:
    """The running quality job's progress; the whole page redraws once it has ended."""
    follow_job("ds_q_job", "Quality")


def quality_change(action, done: str) -> None:
    """Run a change of the dataset from the quality list; say what it made, or why it was refused."""
    try:
        result = action()
    except UserError as exc:
        ui.show_error(exc)
        return
    st.session_state["ds_q_done"] = done.format(result=result)
    for key in ("ds_q_open", "ds_q_selected"):  # rows fixed or removed leave the list
        st.session_state.pop(key, None)
    st.rerun()


def quality_tab() -> None:
    """Run the check, the ranked list, one row beside its neighbours, and the fixes (single and bulk)."""
    st.caption("Label mistakes (held-out logistic regression on the images' embeddings, ranked by cleanlab), "
               "outliers (far from every other image) and near-duplicates, most certain first. Every fix makes a new "
               "dataset version; a row marked checked stays out of later runs.")
    embedders = [m["name"] for m in models_service.list_models(user) if m["kind"] in ("embedder", "classifier")]
    c1, c2 = st.columns([3, 1])
    model = c1.selectbox("Embeddings of", [GENERAL, *embedders], key="ds_q_model",
                         help="general: an ImageNet EfficientNet-Lite0; or a model trained here (often better on "
                         "your concepts)")
    if c2.button("Find issues", key="ds_q_run", type="primary", disabled=not member,
                 help="A background job: embeds new images (cached per version), then ranks the issues"):
        start_job("ds_q_job", "quality", lambda: quality.quality_job_config(user, ds["id"], model))
    quality_progress()
    job_outcome("ds_q", "The quality check")
    last = quality.last_training_config(user, ds["id"]) if mine else None
    if last and st.button(f"Retrain on the fixed version: {last.get('kind', '')} {last.get('template', '')} on "
                          f"version {ds['version']}", key="ds_q_retrain",
                          help="Queues a training job with your last job's configuration on this dataset as it is "
                          "now; compare the two models on the Models page"):
        try:
            job_id = quality.retrain(user, ds["id"])
        except UserError as exc:
            ui.show_error(exc)
        else:
            st.session_state[ui.NEXT_JOB_KEY] = job_id
            st.success(f"Training job {job_id} queued on version {ds['version']}: follow it on the Jobs page.")
    report = quality.dataset_issues(user, ds["id"], model)
    if report is None:
        st.info("No quality check of this dataset with these embeddings yet: press Find issues.")
        return
    counts = {k: sum(r["kind"] == k for r in report["issues"]) for k in quality.ISSUE_KINDS}
    cols = st.columns(4)
    cols[0].metric("Label mistakes", counts["label"])
    cols[1].metric("Outliers", counts["outlier"])
    cols[2].metric("Near-duplicates", counts["near_duplicate"])
    cols[3].metric("Checked on version", report["version"])
    if report["version"] != report["current_version"]:
        st.caption(f"The dataset is at version {report['current_version']} now: rows fixed, removed or checked since "
                   "are left out; run the check again for a fresh list.")
    kinds = st.multiselect("Show", list(quality.ISSUE_KINDS), default=list(quality.ISSUE_KINDS), key="ds_q_kinds",
                           format_func=KIND_NAMES.get)
    rows = [r for r in report["issues"] if r["kind"] in kinds]
    if not rows:
        st.success("Nothing to show: no issue of these kinds left.")
        return
    st.dataframe([{"item": r["item"], "issue": KIND_NAMES[r["kind"]], "given": shown_labels(r["given"]),
                   "suggested": shown_labels(r["suggested"]), "score": r["score"]} for r in rows[:500]],
                 key="ds_q_table", hide_index=True, width="stretch",
                 column_config={"score": st.column_config.ProgressColumn("score", min_value=0.0, max_value=1.0)})
    by_item = {r["item"]: r for r in rows}
    ids = list(by_item)

    # one row: the image beside its nearest images, and its fixes
    item_id = st.selectbox("Open", ids, key="ds_q_open", format_func=lambda i: (
        f"#{i} {KIND_NAMES[by_item[i]['kind']]}: {shown_labels(by_item[i]['given'])}"
        + (f" -> {shown_labels(by_item[i]['suggested'])}" if by_item[i]["suggested"] is not None else "")))
    row = by_item[item_id]
    item = datasets.get_item(user, item_id)
    left, right = st.columns([1, 3])
    left.image(item["path"], caption=f"#{item_id} {ui.md(', '.join(item['labels']) or 'unlabelled')}",
               width="stretch")
    near = quality.item_neighbours(user, ds["id"], item_id, k=5, model=model)
    with right:
        st.markdown("**Nearest images**")
        for col, n in zip(st.columns(5), near):
            col.image(n["path"], caption=f"#{n['item']} {ui.md(', '.join(n['labels']))} ({n['score']:.2f})",
                      width="stretch")
    a1, a2, a3, a4 = st.columns(4)
    if a1.button("Accept the suggestion", key="ds_q_accept", disabled=not mine or row["suggested"] is None):
        quality_change(lambda: quality.accept_suggestions(user, ds["id"], [item_id], model),
                       f"#{item_id} relabelled as suggested: version {{result}}")
    other = a2.selectbox("Another label", concepts, key="ds_q_other", disabled=not mine,
                         label_visibility="collapsed")
    if a2.button("Set this label", key="ds_q_relabel", disabled=not mine or not other):
        quality_change(lambda: datasets.relabel_items(user, ds["id"], {item_id: [other]}),
                       f"#{item_id} relabelled: version {{result}}")
    if a3.button("Remove the image", key="ds_q_remove", disabled=not mine):
        quality_change(lambda: datasets.delete_items(user, ds["id"], [item_id]),
                       f"#{item_id} removed: version {{result}}")
    if a4.button("Mark checked", key="ds_q_check", disabled=not mine,
                 help="The label is right: keep this image out of later quality lists"):
        quality_change(lambda: quality.mark_checked(user, ds["id"], [item_id]), f"#{item_id} marked checked")

    # several rows at once
    st.markdown("**Fix several rows**")
    picked = st.multiselect("Rows", ids, key="ds_q_selected", format_func=lambda i: f"#{i} {by_item[i]['kind']}",
                            disabled=not mine)
    suggestible = [i for i in picked if by_item[i]["kind"] == "label"]
    b1, b2, b3, b4 = st.columns(4)
    if b1.button(f"Accept {len(suggestible)} suggestion(s)", key="ds_q_bulk_accept",
                 disabled=not mine or not suggestible):
        quality_change(lambda: quality.accept_suggestions(user, ds["id"], suggestible, model),
                       f"{len(suggestible)} image(s) relabelled as suggested: version {{result}}")
    bulk_label = b2.selectbox("Label for the rows", concepts, key="ds_q_bulk_other", disabled=not mine,
                              label_visibility="collapsed")
    if b2.button("Set this label on the rows", key="ds_q_bulk_relabel", disabled=not mine or not picked):
        quality_change(lambda: datasets.relabel_items(user, ds["id"], {i: [bulk_label] for i in picked}),
                       f"{len(picked)} image(s) relabelled: version {{result}}")
    if b3.button("Remove the rows' images", key="ds_q_bulk_remove", disabled=not mine or not picked):
        quality_change(lambda: datasets.delete_items(user, ds["id"], picked),
                       f"{len(picked)} image(s) removed: version {{result}}")
    if b4.button("Mark the rows checked", key="ds_q_bulk_check", disabled=not mine or not picked):
        quality_change(lambda: quality.mark_checked(user, ds["id"], picked), f"{len(picked)} row(s) marked checked")


def unlabelled_section() -> None:
    """Suggested labels from a trained classifier, accepted above a confidence; "label these first"."""
    st.caption("Images without a label: a classifier trained here suggests labels, accepted at once above a "
               "confidence you choose; \"Label these first\" lists the images the labelled ones say least about "
               "(the most uncertain, spread over the data).")
    classifiers = [m["name"] for m in models_service.list_models(user, "classifier")]
    c1, c2 = st.columns([3, 1])
    clf = c1.selectbox("Suggest labels with", classifiers, key="ds_u_model", disabled=not classifiers,
                       help="Train a classifier on the labelled images first (Train page)")
    if c2.button("Suggest labels", key="ds_u_suggest", disabled=not clf or not mine):
        with st.spinner("Predicting..."):
            try:
                st.session_state["ds_u_suggestions"] = (ds["id"], labelling.suggest_labels(user, ds["id"], clf))
            except UserError as exc:
                ui.show_error(exc)
    held = st.session_state.get("ds_u_suggestions")
    suggestions = held[1] if held and held[0] == ds["id"] else []
    if suggestions:
        floor = st.slider("Accept at or above this confidence", 0.0, 1.0, 0.9, 0.01, key="ds_u_min")
        above = [s for s in suggestions if s["confidence"] >= floor]
        st.dataframe([{"item": s["item"], "suggested": ", ".join(s["suggested"]), "confidence": s["confidence"]}
                      for s in suggestions[:500]], hide_index=True, width="stretch",
                     column_config={"confidence": st.column_config.ProgressColumn("confidence", min_value=0.0,
                                                                                  max_value=1.0)})
        if st.button(f"Accept {len(above):,} suggestion(s)", key="ds_u_accept", disabled=not above or not mine):
            try:
                version, done = labelling.accept_suggested(user, ds["id"], suggestions, floor)
            except UserError as exc:
                ui.show_error(exc)
            else:
                st.session_state.pop("ds_u_suggestions", None)
                st.session_state["ds_q_done"] = f"{done:,} image(s) labelled as suggested: version {version}"
                st.rerun()
    c1, c2 = st.columns([3, 1])
    n = int(c1.number_input("How many", 1, labelling.MAX_FIRST, 20, key="ds_u_first_n"))
    if c2.button("Label these first", key="ds_u_first"):
        with st.spinner("Embedding and ranking..."):
            try:
                st.session_state["ds_u_first_list"] = (ds["id"], labelling.label_first(
                    user, ds["id"], n, st.session_state.get("ds_q_model") or GENERAL))
            except UserError as exc:
                ui.show_error(exc)
    held = st.session_state.get("ds_u_first_list")
    first = held[1] if held and held[0] == ds["id"] else []
    if held and held[0] == ds["id"] and not first:
        st.success("Every image has a label.")
    for start in range(0, len(first), 10):
        for col, f in zip(st.columns(10), first[start:start + 10]):
            col.image(datasets.thumbnail_path(user, f["item"]),
                      caption=f"first #{f['item']} ({ui.md(f['guess'] or '?')}?)", width="stretch")


with tab_quality:
    quality_tab()
    if st.toggle("Unlabelled images", key="ds_u_show"):
        unlabelled_section()


# ------------------------------------------------------------------------------------------------ map
MAP_LAYOUTS = {"pca": "PCA (at once)", "umap": "UMAP (computed as a job)"}
MAP_COLOURS = ("concept", "issue kind", "split")


@st.fragment(run_every=QUALITY_POLL_S if st.session_state.get("ds_map_job") else None)
def map_progress() -> None:
    """The running map job's progress; the whole page redraws once it has ended."""
    follow_job("ds_map_job", "Map")


def held_map(model: str, method: str):
    """The dataset's map, kept in this session while the dataset version, embedder and layout stay the same."""
    key = (ds["id"], ds["version"], model, method)
    held = st.session_state.get("ds_map_held")
    if held and held[0] == key:
        return held[1]
    found = atlas.dataset_map(user, ds["id"], model, method)
    if found is not None:
        st.session_state["ds_map_held"] = (key, found)
    return found


def map_tab() -> None:
    """The map (a sample drawn, a selection over all points), the selected images and their bulk relabelling."""
    model = st.session_state.get("ds_q_model") or GENERAL
    st.caption(f"Every image as a point, near its look-alikes (embeddings of {ui.md(model)}, chosen in the Quality "
               "tab). Draw a box or a lasso to select images; they show below, where they can be relabelled at once.")
    c1, c2, c3 = st.columns([2, 2, 1])
    method = c1.radio("Layout", list(MAP_LAYOUTS), format_func=MAP_LAYOUTS.get, horizontal=True, key="ds_map_method")
    colour = c2.selectbox("Colour by", MAP_COLOURS, key="ds_map_colour")
    if c3.button("Compute UMAP", key="ds_map_umap", disabled=not member,
                 help="A background job: embeds new images (cached per version), then lays them out with UMAP"):
        start_job("ds_map_job", "map", lambda: atlas.map_job_config(user, ds["id"], model))
    map_progress()
    job_outcome("ds_map", "The map job")
    found = held_map(model, method)
    if found is None:
        st.info("No map yet: the images are not embedded with these embeddings. Press Compute UMAP (or Find issues "
                "in the Quality tab); the PCA map shows as soon as they are." if method == "pca" else
                "No UMAP map yet: press Compute UMAP. The PCA layout shows at once.")
        return
    ids, xy = found["ids"], found["xy"]
    report = quality.dataset_issues(user, ds["id"], model)
    kinds = {r["item"]: r["kind"] for r in (report["issues"] if report else [])}
    values = {"concept": found["concept"], "split": found["split"],
              "issue kind": [kinds.get(int(i), "none") for i in ids]}[colour]
    drawn = atlas.drawn_sample(len(ids))
    frame = pd.DataFrame({"x": xy[drawn, 0], "y": xy[drawn, 1], "item": ids[drawn],
                          colour: np.asarray(values, dtype=object)[drawn]})
    fig = px.scatter(frame, x="x", y="y", color=colour, hover_data=["item"], render_mode="webgl")
    fig.update_traces(marker={"size": 5})
    fig.update_layout(height=520, dragmode="lasso", margin=dict(l=10, r=10, t=10, b=10))
    st.caption(f"{len(ids):,} images, {found['method'].upper()} of version {found['version']}"
               + (f"; {len(drawn):,} drawn (a sample): a selection takes every image inside it"
                  if len(drawn) < len(ids) else ""))
    event = st.plotly_chart(fig, key="ds_map_chart", on_select="rerun", selection_mode=("box", "lasso"))
    drawn_region = atlas.region_from_selection((event or {}).get("selection"))
    if drawn_region != st.session_state.get("ds_map_drawn"):  # the chart's selection changed (or was cleared)
        st.session_state["ds_map_drawn"] = drawn_region
        st.session_state["ds_map_region"] = drawn_region
    selected = ids[atlas.select_region(xy, st.session_state.get("ds_map_region"))].tolist()
    if not selected:
        st.caption("Nothing selected.")
        return
    st.markdown(f"**{len(selected):,} image(s) selected**" + (" (the first 50 shown)" if len(selected) > 50 else ""))
    for start in range(0, min(len(selected), 50), 10):
        for col, item_id in zip(st.columns(10), selected[start:start + 10]):
            item = datasets.get_item(user, item_id)
            col.image(item["thumb"], caption=f"selected #{item_id}: {ui.md(', '.join(item['labels']))}",
                      width="stretch")
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
    label = c1.selectbox("Label", concepts, key="ds_map_label", disabled=not mine)
    new_label = c2.text_input("or a new concept", key="ds_map_new_label", disabled=not mine)
    chosen = new_label.strip() or label
    if c3.button(f"Relabel {len(selected):,}", key="ds_map_relabel", disabled=not mine or not chosen):
        try:
            version = datasets.relabel_items(user, ds["id"], {i: [chosen] for i in selected})
        except UserError as exc:
            ui.show_error(exc)
        else:
            st.session_state["ds_map_done"] = (f"{len(selected):,} image(s) relabelled {ui.md(repr(chosen))}: "
                                               f"version {version}")
            st.session_state.pop("ds_map_region", None)
            st.rerun()
    if c4.button("Clear the selection", key="ds_map_clear"):
        st.session_state.pop("ds_map_region", None)
        st.rerun()


with tab_map:
    map_tab()
