"""Models: every trained model; open one to see its evaluation, predict, fix labels, compare, report, export, delete."""

from __future__ import annotations

import streamlit as st

from core import ui
from core.data import service as datasets
from core.errors import UserError
from core.evaluation import charts, drawing, export, report, service
from core.evaluation.predict import above, predict
from core.users import can_change, has_role

st.set_page_config(page_title="Models", layout="wide")
st.title("Models")
user = ui.current_user()
GALLERY_PAGE = 12  # misclassified images per page (each carries a fix-labels form)
DETECTOR_PAGE = 6  # detector validation images per page, each drawn twice (ground truth, predictions)


def gallery(items: list[dict], caption, columns: int = 6) -> None:
    """Thumbnails of dataset items in a grid, ``caption(item)`` under each."""
    cols = st.columns(columns)
    for i, it in enumerate(items):
        with cols[i % columns]:
            try:
                st.image(datasets.thumbnail_path(user, it["item_id"]), caption=caption(it), width="stretch")
            except UserError:
                st.caption(f"item {it['item_id']} (deleted)")


def classifier_view(row: dict, result: dict) -> None:
    c = st.columns(5)
    c[0].metric("Accuracy (top-1)", f"{result['accuracy']:.3f}")
    c[1].metric("Top-5", f"{result['top5']:.3f}")
    c[2].metric("Macro ROC AUC", "n/a" if result["macro_roc_auc"] is None else f"{result['macro_roc_auc']:.3f}")
    c[3].metric("Items", result["items"])
    c[4].metric("Split", result["split"])

    st.subheader("Per concept")
    threshold = st.slider("Prediction threshold", 0.0, 1.0, 0.5, 0.01, key="models_threshold",
                          help="A concept counts as predicted when its probability is at least this.")
    table = service.per_concept_at(row, threshold)
    best = result["best_f1"]
    for r in table:
        b = best.get(r["concept"]) or {}
        r["best F1 threshold"] = b.get("threshold")
        r["best F1"] = b.get("f1")
    st.dataframe(table, key="models_concept_table", hide_index=True, column_config={
        k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "f1", "best F1 threshold",
                                                                   "best F1")})
    st.caption("best F1 threshold: per concept, the threshold that maximises F1 on this split (its F1 beside it); "
               "the chart below marks both.")
    st.plotly_chart(charts.per_concept_f1(table, best), key="models_f1_chart")

    st.subheader("Confusion matrix")
    concepts = result["concepts"]
    normalised = st.radio("Show", ["counts", "row-normalised"], horizontal=True, key="models_cm_mode") != "counts"
    picked = (st.session_state.get("models_cm_chart") or {}).get("selection", {}).get("points") or []
    cell = (picked[0].get("y"), picked[0].get("x")) if picked else None
    if cell and set(cell) <= set(concepts) and cell != st.session_state.get("models_cm_clicked"):
        st.session_state["models_cm_clicked"] = cell  # apply a new click once; the select boxes stay editable
        st.session_state["models_cm_true"], st.session_state["models_cm_pred"] = cell
    st.plotly_chart(charts.confusion_heatmap(result, normalised), key="models_cm_chart", on_select="rerun",
                    selection_mode="points")
    for key, default in (("models_cm_true", concepts[0]), ("models_cm_pred", concepts[min(1, len(concepts) - 1)])):
        if st.session_state.get(key) not in concepts:  # first visit, or another model's concepts
            st.session_state[key] = default
    a, b = st.columns(2)
    true = a.selectbox("True concept", concepts, key="models_cm_true")
    pred = b.selectbox("Predicted concept", concepts, key="models_cm_pred")
    cell = service.cell_items(row, true, pred)
    st.caption(f"{len(cell)} image(s) labelled {ui.md(repr(true))} with top prediction {ui.md(repr(pred))} "
               "(click a cell to pick it)")
    gallery(cell[:36], lambda it: f"p({ui.md(pred)}) = {it['probability']:.2f}")

    st.subheader("Precision-recall and ROC")
    shown = st.multiselect("Concepts", concepts, default=concepts[:5], key=f"models_curve_concepts_{row['id']}")
    a, b = st.columns(2)
    a.plotly_chart(charts.pr_curves(result, shown), key="models_pr_chart")
    b.plotly_chart(charts.roc_curves(result, shown), key="models_roc_chart")

    misclassified_view(row, result)


def misclassified_view(row: dict, result: dict) -> None:
    wrong = result["misclassified"]
    st.subheader(f"Misclassified ({len(wrong)})")
    if not wrong:
        st.success("Every held-out image is classified correctly.")
        return
    pages = max(1, -(-len(wrong) // GALLERY_PAGE))
    page = st.number_input("Page", 1, pages, 1, key="models_wrong_page") if pages > 1 else 1
    dataset_concepts = sorted(set(datasets.dataset_concepts(user, row["dataset_id"])) | set(row["concepts"])) \
        if row.get("dataset_id") else list(row["concepts"])
    cols = st.columns(4)
    for i, miss in enumerate(wrong[(page - 1) * GALLERY_PAGE: page * GALLERY_PAGE]):
        with cols[i % 4]:
            true = ", ".join(f"{t['name']} ({t['probability']:.2f})" for t in miss["true"])
            guess = ", ".join(f"{p['name']} ({p['probability']:.2f})" for p in miss["predicted"])
            try:
                st.image(datasets.thumbnail_path(user, miss["item_id"]), width="stretch")
            except UserError:
                st.caption("(image deleted from the dataset)")
                continue
            st.caption(f"true: {ui.md(true)}  \npredicted: {ui.md(guess)}")
            with st.popover("Fix labels"):
                current = datasets.get_item(user, miss["item_id"])["labels"]
                labels = st.multiselect("Labels", sorted(set(dataset_concepts) | set(current)), default=current,
                                        key=f"models_fix_{miss['item_id']}")
                if st.button("Save labels", key=f"models_fix_save_{miss['item_id']}"):
                    try:
                        version = datasets.set_item_labels(user, miss["item_id"], labels)
                        st.success(f"Saved: the dataset is now version {version}. Re-evaluate to see the effect.")
                    except UserError as exc:
                        ui.show_error(exc)


def embedder_view(row: dict, result: dict) -> None:
    base = result.get("baseline") or {}
    c = st.columns(4)
    for col, (label, key) in zip(c, (("recall@1", "recall_at_1"), ("recall@5", "recall_at_5"), ("mAP@R", "map_at_r"))):
        value, before = result.get(key), base.get(key)
        delta = None if value is None or before is None else f"{value - before:+.3f} vs general ({before:.3f})"
        col.metric(label, "n/a" if value is None else f"{value:.3f}", delta=delta)
    c[3].metric("Queries / gallery", f"{result['queries']} / {result['gallery']}")
    st.caption(f"The {result['split']} split's images are the queries, every other image the gallery; a result is "
               "relevant when it shares a concept with the query. The differences are against the untrained general "
               "embedder on the same queries and gallery: what training bought.")
    curves = [(row["name"], result["recall_at_k"])]
    if base.get("recall_at_k"):
        curves.append((base["label"], base["recall_at_k"]))
    st.plotly_chart(charts.recall_at_k(curves), key="models_rk_chart")
    st.subheader("Embedding map")
    st.caption("Hover a point for its concept; select points (click or lasso) to see their images. The downloadable "
               "report shows each image on hover.")
    event = st.plotly_chart(charts.embedding_map(result), key="models_map_chart", on_select="rerun",
                            selection_mode=("points", "lasso", "box"))
    points = (event or {}).get("selection", {}).get("points") or []
    ids = [p["customdata"][0] for p in points if p.get("customdata")]
    by_id = {p["item_id"]: p for p in result["map"]}
    if ids:
        gallery([by_id[i] for i in ids[:36] if i in by_id], lambda it: ui.md(it["concept"]))


def detector_view(row: dict, result: dict) -> None:
    c = st.columns(7)
    for col, (label, key) in zip(c, [("mAP@[.5:.95]", "map"), ("AP50", "ap50"), ("AP75", "ap75"),
                                     ("mAP small", "map_small"), ("mAP medium", "map_medium"),
                                     ("mAP large", "map_large")]):
        value = result.get(key)
        col.metric(label, "n/a" if value is None else f"{value:.3f}")
    c[6].metric("Images", result["images"])
    st.dataframe(report.detector_table(result), hide_index=True, key="models_det_table")
    a, b = st.columns(2)
    a.plotly_chart(charts.detection_ap(result), key="models_ap_chart")
    if result.get("pr_curves"):
        b.plotly_chart(charts.detection_pr_curves(result), key="models_det_pr_chart")
    if result.get("detection_confusion"):
        st.plotly_chart(charts.detection_confusion(result), key="models_det_confusion_chart")
    st.subheader("Validation images: ground truth (left) and predictions (right)")
    f1, f2, f3 = st.columns(3)
    concept = f1.selectbox("Concept", ["every concept", *result["concepts"]], key="models_det_concept")
    kinds = {"every image": None, "any error": service.ANY_ERROR, "another concept's object": "wrong_concept",
             "a box on background": "background", "a missed object": "missed", "no error": service.NO_ERROR}
    kind = f2.selectbox("Showing", list(kinds), key="models_det_error")
    shown = service.detector_samples(result, None if concept == "every concept" else concept, kinds[kind])
    pages = max(1, -(-len(shown) // DETECTOR_PAGE))
    page = int(f3.number_input(f"Page (of {pages})", 1, pages, 1, key="models_det_page"))
    st.caption(f"{len(shown)} of {len(result['samples'])} images")
    for s in shown[(page - 1) * DETECTOR_PAGE: page * DETECTOR_PAGE]:
        left, right = st.columns(2)
        errors = ", ".join(e.replace("_", " ") for e in s.get("errors", [])) or "no error"
        left.image(drawing.draw_boxes(s["path"], s["truth"], result["concepts"], max_side=480),
                   caption=f"item {s['item_id']}: ground truth", width="stretch")
        right.image(drawing.draw_boxes(s["path"], s["predicted"], result["concepts"], max_side=480),
                    caption=f"predicted ({errors})", width="stretch")


def evaluation_tab(row: dict) -> None:
    result = service.cached(row)
    refresh = st.button("Re-evaluate" if result else "Evaluate", key="models_eval_btn",
                        help="Runs the model over the held-out split; the result is cached beside the model.")
    if result is None or refresh:
        if not row.get("dataset_id") and result is None:
            st.info("This model has no dataset in the studio (it was imported), so there is nothing to evaluate on.")
            return
        if result is None and not refresh:
            st.info("Not evaluated on the current dataset version yet. Press Evaluate.")
            return
        bar = st.progress(0.0, text="Evaluating...")
        try:
            result = service.evaluate(user, row["id"], refresh=True,
                                      progress=lambda f, text: bar.progress(f, text=text))
        except UserError as exc:
            ui.show_error(exc)
            return
        finally:
            bar.empty()
    st.caption(f"Dataset {ui.md(result['dataset']['name'])} v{result['dataset']['version']} (model trained on "
               f"v{row['dataset_version']}), {result['split']} split.")
    {"classifier": classifier_view, "embedder": embedder_view, "detector": detector_view}[result["kind"]](row, result)


def predict_tab(row: dict) -> None:
    if row["kind"] == "embedder" and not row["concepts"]:
        st.info("This embedder has no concepts to predict; use Visual Search.")
        return
    source = st.radio("Images from", ["Upload", "Dataset"], horizontal=True, key="models_predict_source")
    images: list = []
    if source == "Upload":
        files = st.file_uploader("Images", accept_multiple_files=True, key="models_predict_upload")
        for f in files or []:
            try:
                ui.check_upload(f)
                images.append((f.name, f.getvalue()))
            except UserError as exc:
                ui.show_error(exc)
    else:
        visible = datasets.list_datasets(user)
        if not visible:
            st.info("No dataset yet.")
            return
        names = [datasets.display_name(user, d) for d in visible]
        default = next((i for i, d in enumerate(visible) if d["id"] == row.get("dataset_id")), 0)
        name = st.selectbox("Dataset", names, index=default, key="models_predict_dataset")
        records = datasets.dataset_records(user, name)[:500]
        picked = st.multiselect("Images", records, default=records[:1], key=f"models_predict_items_{name}",
                                format_func=lambda r: f"#{r['item_id']} {r['source_path'] or ''} "
                                                      f"[{', '.join(r['labels'])}]", max_selections=12)
        images = [r["path"] for r in picked]
    threshold = st.slider("Threshold (multi-label models)", 0.0, 1.0, 0.5, 0.01, key="models_predict_threshold") \
        if service.multi_label(row) else 0.5
    detector = row["kind"] == "detector"
    if detector:
        start = float((row.get("params") or {}).get("detection_score_threshold") or 0.0)
        score = st.slider("Score threshold", 0.0, 1.0, start, 0.01, key=f"models_predict_score_{row['id']}",
                          help="Boxes scoring above this are shown; it starts at the model's "
                               "detection_score_threshold and filters the boxes already found, without running the "
                               "model again.")
    if st.button("Predict", key="models_predict_btn", disabled=not images):
        try:
            found = predict(user, row["id"], images, threshold=threshold, score_threshold=0.0 if detector else None)
            st.session_state["models_predictions"] = (row["id"], images, found)
        except UserError as exc:
            ui.show_error(exc)
    # the images each result was predicted on (the picker or the uploads may have changed since the click)
    model_id, predicted, results = st.session_state.get("models_predictions") or (None, [], [])
    if model_id != row["id"]:
        return
    if detector:
        for entry, src in zip(results, predicted):
            boxes = above(entry["boxes"], score)
            st.image(drawing.draw_boxes(src, boxes, row["concepts"]),
                     caption=f"{entry['image'].split('/')[-1]}: {len(boxes)} of {len(entry['boxes'])} boxes above "
                             f"{score:.2f}", width="content")
        return
    for entry, src in zip(results, predicted):
        a, b = st.columns([1, 2])
        a.image(src[1] if isinstance(src, tuple) else src, caption=entry["image"].split("/")[-1],
                width="stretch")
        if entry["concepts"]:
            b.plotly_chart(charts.prediction_bar(entry["concepts"]), key=f"models_pred_chart_{entry['image']}")
        else:
            b.info("No concept reaches the threshold.")


def share_tab(row: dict) -> None:
    st.subheader("Report")
    st.caption("One HTML file with the metrics, interactive charts and a sample of images; opens without the server.")
    if st.button("Build report", key="models_report_btn"):
        with st.spinner("Building the report..."):
            try:
                st.session_state["models_report"] = (row["id"], report.build_report(user, row["id"]))
            except UserError as exc:
                ui.show_error(exc)
    built = st.session_state.get("models_report")
    if built and built[0] == row["id"]:
        st.download_button("Download report", built[1], f"{row['name']}-evaluation.html", "text/html",
                           key="models_report_dl")

    st.subheader("Export")
    fmt = st.radio("Format", export.formats_for(row), horizontal=True, key="models_export_format",
                   format_func={"zip": "zip (safetensors + config)", "torchscript": "TorchScript",
                                "onnx": "ONNX"}.get)
    if st.button("Build export", key="models_export_btn"):
        out = ui.export_path(user, f"{row['name']}.{ {'zip': 'zip', 'torchscript': 'pt', 'onnx': 'onnx'}[fmt] }")
        with st.spinner("Exporting and checking the export against the original..."):
            try:
                st.session_state["models_export"] = (row["id"], fmt, export.export_model(user, row["id"], fmt, out))
            except UserError as exc:
                ui.show_error(exc)
    built = st.session_state.get("models_export")
    if built and built[0] == row["id"] and built[1] == fmt:
        info = built[2]
        from pathlib import Path

        st.download_button(f"Download {Path(info['path']).name}", lambda: Path(info["path"]).read_bytes(),
                           Path(info["path"]).name, key="models_export_dl")  # read on click, not every rerun
        if fmt != "zip":
            st.caption(f"Checked: largest difference from the original network {info['max_diff']:.1e}.")
    st.caption("Load the export and predict:")
    try:
        st.code(export.snippet(row, fmt), language="python")
    except UserError as exc:
        ui.show_error(exc)

    mine = has_role(user, "member") and can_change(user, row)
    st.subheader("Sharing")
    st.caption(f"Owner: {ui.md(row['owner'])}. Team: everyone on this server may evaluate it, predict with it, "
               "export it and use it as a base model, read-only.")
    ui.share_toggle(user, row, lambda visibility: service.share_model(user, row["id"], visibility), key="models_share",
                    help="Everyone on this server may then evaluate it, predict with it and use it as a base")

    st.subheader("Delete")
    sure = st.checkbox(f"Yes, delete {ui.md(row['name'])} and its files", key="models_delete_confirm",
                       disabled=not mine)
    if st.button("Delete model", key="models_delete_btn", disabled=not sure or not mine, type="primary"):
        service.delete_model(user, row["id"])
        st.session_state.pop("models_selected", None)
        st.rerun()


def compare_section(rows: list[dict]) -> None:
    names = {r["id"]: r["name"] if r["owner"] == str(user) else f"{r['owner']}/{r['name']}" for r in rows}
    picked = st.multiselect("Models to compare (same kind, same dataset)", list(names),
                            format_func=names.get, key="models_compare")
    if len(picked) < 2:
        st.caption("Pick two or more models.")
        return
    try:
        comparison = service.compare(user, picked)
    except UserError as exc:
        ui.show_error(exc)
        return
    if comparison["trained_on_versions"]:
        st.caption("Trained on versions " + ", ".join(str(v) for v in comparison["trained_on_versions"])
                   + " of the dataset (before and after a fix): every model is evaluated on the dataset as it is "
                   "now, so the figures compare like with like.")
    st.dataframe(comparison["table"], key="models_compare_table", hide_index=True)
    if comparison.get("per_concept"):
        st.dataframe(comparison["per_concept"], key="models_compare_per_concept", hide_index=True)
    figs = charts.compare_curves(comparison)
    cols = st.columns(max(1, len(figs)))
    for i, fig in enumerate(figs):
        cols[i].plotly_chart(fig, key=f"models_compare_chart_{i}")


def import_section() -> None:
    from core.templates import list_templates

    if not has_role(user, "member"):
        st.caption(f"Importing a model needs the member role; you are a {user.role}.")
        return
    # a new key once imported: Streamlit then drops the uploader and the bytes it held for this session
    upload_round = st.session_state.get("models_import_round", 0)
    upload_key = f"models_import_upload_{upload_round}"
    upload = st.file_uploader("Exported model (.zip)", type=["zip"], key=upload_key)
    choices = ["(any template)"] + [f"{t.kind}/{t.name}" for t in list_templates()]
    expect = st.selectbox("Load into template", choices, key="models_import_template",
                          help="An archive exported from another template is refused.")
    if st.button("Import", key="models_import_btn", disabled=upload is None):
        try:
            ui.check_upload(upload)
            model_id = export.import_archive(user, upload.getvalue(),
                                             expect=None if expect == choices[0] else tuple(expect.split("/", 1)))
            st.session_state["models_import_round"] = upload_round + 1
            ui.forget_upload(upload, upload_key)  # stored: its bytes leave the server's memory now
            st.success(f"Imported as model {ui.md(service.get(user, model_id)['name'])}.")
        except UserError as exc:
            ui.show_error(exc)


rows = service.registry_rows(user)
if not rows:
    st.info("No trained model yet. Train one on the Train page, or import an exported model below.")
    ui.link_page("pages/2_Train.py", "Go to Train", icon=":material/model_training:")
    with st.expander("Import an exported model"):
        import_section()
    st.stop()

st.dataframe(rows, key="models_table", hide_index=True,
             column_config={"kind": st.column_config.TextColumn("kind"),
                            "hyperparameters": st.column_config.TextColumn("hyperparameters", width="large")})
ids = [r["id"] for r in rows]
by_id = {r["id"]: r for r in rows}
if st.session_state.get("models_selected") not in ids:
    st.session_state["models_selected"] = ids[0]
model_id = st.selectbox("Open model", ids, key="models_selected",
                        format_func=lambda i: f"{by_id[i]['name']} · {ui.KIND_LABELS.get(by_id[i]['kind'])} · "
                                              f"{by_id[i]['template']} · {by_id[i]['dataset']}")
row = service.get(user, model_id)
st.caption(service.train_time(user, model_id)["text"])
tuned = service.head_tuning(user, model_id)
if tuned:
    with st.expander(tuned["text"]):
        param = tuned["param"]  # "C" (a fitted head) or "lrate"
        st.dataframe([{param: c[param], "held-out loss": round(c["val_loss"], 4),
                       "held-out top-1": round(c["val_top1"], 4), "chosen": c[param] == tuned["chosen"]}
                      for c in tuned["candidates"]], hide_index=True)

tab_eval, tab_predict, tab_share, tab_compare, tab_import = st.tabs(
    ["Evaluation", "Predict", "Report, export, delete", "Compare", "Import"])
with tab_eval:
    evaluation_tab(row)
with tab_predict:
    predict_tab(row)
with tab_share:
    share_tab(row)
with tab_compare:
    compare_section([r for r in rows])
with tab_import:
    import_section()
