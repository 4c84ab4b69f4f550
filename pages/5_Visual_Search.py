"""Visual Search: build an index of a dataset, query it by upload, dataset image or concept, find near-duplicates.

Other pages open it on one image ("find similar") with ``st.session_state[ui.NEXT_SEARCH_ITEM_KEY] = item_id`` and
``st.switch_page("pages/5_Visual_Search.py")``.
"""

from __future__ import annotations

import streamlit as st

from core import jobs, ui
from core.data import service as datasets_service
from core.errors import UserError
from core.evaluation import service as models_service
from core.models import GENERAL
from core.search import service
from core.text import human_bytes
from core.users import can_change, has_role

st.set_page_config(page_title="Visual Search", layout="wide")
st.title("Visual Search")
user = ui.current_user()
MODES = ("Upload an image", "Dataset image", "Concept")
ANY = "(any concept)"


def build_section(datasets: list[dict], expanded: bool) -> None:
    """Pick a dataset and a model; build as a background job (default) or here with a progress bar."""
    with st.expander("Build an index", expanded=expanded):
        if not datasets:
            st.info("No dataset yet: import one on the Datasets page first.")
            return
        models = [m for m in models_service.list_models(user) if m["kind"] in ("embedder", "classifier")]
        choices = [GENERAL] + [str(m["id"]) for m in models]
        labels = {GENERAL: "General embedder (EfficientNet-Lite0, ImageNet, 1,280-d)"}
        labels.update({str(m["id"]): f"{m['name']} ({m['kind']}, {m['template']})"
                       + ("" if m["owner"] == str(user) else f", shared by {m['owner']}") for m in models})
        c1, c2, c3 = st.columns([2, 3, 2])
        dataset = c1.selectbox("Dataset", [datasets_service.display_name(user, d) for d in datasets],
                               key="vs_build_dataset")
        model = c2.selectbox("Embedding model", choices, format_func=labels.get, key="vs_build_model",
                             help="A classifier embeds with its layer before the classifier.")
        name = c3.text_input("Index name (optional)", key="vs_build_name", placeholder="dataset-model")
        background = st.checkbox("Run as a background job (follow it on the Jobs page)", value=True,
                                 key="vs_build_background")
        if st.button("Build index", key="vs_build", type="primary"):
            config = {"dataset": dataset, "model": model, "name": name.strip() or None}
            try:
                if background:
                    job_id = jobs.submit(user, "index", config)
                    st.success(f"Job {job_id} queued: {ui.md(jobs.describe(jobs.status(user, job_id)))}. "
                               "The index appears here when it finishes.")
                else:
                    bar = st.progress(0.0, text="Embedding images...")
                    res = service.build_index_now(user, dataset, model, config["name"],
                                                  progress=lambda f, text: bar.progress(f, text=text))
                    bar.progress(1.0, text="Done")
                    st.session_state["vs_index"] = res["name"]
                    st.success(f"Index {ui.md(repr(res['name']))} built: {res['count']:,} images.")
            except Exception as exc:  # noqa: BLE001 - shown to the user, never a bare traceback
                ui.show_error(exc)


def facts_section(name: str, facts: dict) -> None:
    cols = st.columns(6)
    cols[0].metric("Images", f"{facts['count']:,}")
    cols[1].metric("Dimension", facts["dim"])
    params = ", ".join(f"{k}={v}" for k, v in facts["index_params"].items() if k in ("nlist", "nprobe"))
    # the value fits a sixth of the page; whether it is exact goes in the label and the help
    cols[2].metric("Index (exact)" if facts["exact"] else "Index (approximate)", facts["index_type"],
                   help="exact: every vector is compared with the query" if facts["exact"] else
                   "approximate: only the nearest clusters are compared (nprobe of nlist)")
    cols[3].metric("Build time", f"{facts['build_seconds']:.1f} s" if facts["build_seconds"] else "-")
    cols[4].metric("Memory", human_bytes(facts["memory_bytes"]))
    cols[5].metric("On disk", human_bytes(facts["disk_bytes"]))
    st.caption(f"Model: {ui.md(facts['model_label'])} · dataset {ui.md(facts['dataset'])} "
               f"(version {facts['dataset_version']})"
               + (f" · parameters: {params}" if params else "")
               + (f" · {facts['images_per_sec']:.1f} images/s embedded" if facts.get("images_per_sec") else ""))
    mine = has_role(user, "member") and can_change(user, facts)
    if facts["stale"]:
        st.warning("The dataset changed since this index was built: new images are not searchable yet and deleted "
                   "ones are skipped." + ("" if mine else f" Its owner, {facts['owner']}, can sync it."))
        if mine and st.button("Sync the index now", key="vs_sync"):
            try:
                with st.spinner("Embedding new images..."):
                    res = service.sync_index(user, name)
                st.success(f"Synced: {res['added']} added, {res['removed']} removed; {res['count']:,} images.")
            except Exception as exc:  # noqa: BLE001
                ui.show_error(exc)


def results_grid(results: list[dict], per_row: int = 5) -> None:
    if not results:
        st.info("No results.")
        return
    for start in range(0, len(results), per_row):
        cols = st.columns(per_row)
        for col, r in zip(cols, results[start:start + per_row]):
            with col:
                st.image(r["path"], width="stretch")
                st.markdown(f"**{r['score']:.3f}** · {ui.md(', '.join(r['concepts'])) or 'unlabelled'}  \n"
                            f"item {r['item']}")
                if st.button("Find similar", key=f"vs_similar_{r['item']}"):
                    st.session_state[ui.NEXT_SEARCH_ITEM_KEY] = r["item"]
                    st.rerun()


def query_section(name: str, facts: dict) -> None:
    """Query by upload, dataset image or concept; k and a concept filter; results and the query's nearest concepts."""
    concepts = service.index_concepts(user, name)
    if ui.NEXT_SEARCH_ITEM_KEY in st.session_state:  # "Find similar" on a result (or from the Datasets page)
        st.session_state["vs_mode"] = "Dataset image"
        st.session_state["vs_item"] = int(st.session_state.pop(ui.NEXT_SEARCH_ITEM_KEY))
    mode = st.radio("Query by", MODES, horizontal=True, key="vs_mode")
    c1, c2 = st.columns([3, 2])
    k = c2.slider("Results (k)", 1, 50, 10, key="vs_k")
    flt = c2.selectbox("Only results labelled", [ANY, *concepts], key="vs_filter")
    query: dict = {}
    with c1:
        if mode == "Upload an image":
            up = st.file_uploader("Image", type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"],
                                  key="vs_upload")
            if up is not None:
                try:
                    ui.check_upload(up)
                    st.image(up, width=160)
                    query = {"image": (up.name, up.getvalue())}  # a refusal names the file
                except UserError as exc:
                    ui.show_error(exc)
        elif mode == "Dataset image":
            first = service.index_first_item(user, name)
            st.session_state.setdefault("vs_item", first or 0)
            item = st.number_input("Item id", min_value=0, step=1, key="vs_item")
            try:
                it = service.index_item(user, name, int(item))
                st.image(it["thumb"], width=160, caption=f"item {it['item_id']}: {ui.md(', '.join(it['labels']))}")
                query = {"item_id": int(item)}
            except UserError as exc:
                ui.show_error(exc)
        else:
            if concepts:
                query = {"concept": st.selectbox("Concept", concepts, key="vs_concept")}
            else:
                st.info("This dataset has no concepts.")
    if not query:
        return
    try:
        opened = service.open_index(user, name)  # loaded once per server (core.loaded), shared by every session
        results = service.search(user, name, k=k, concept_filter=None if flt == ANY else flt, opened=opened,
                                 **query)
        near = service.nearest_concepts(user, name, top=5, opened=opened, **query)
    except Exception as exc:  # noqa: BLE001
        ui.show_error(exc)
        return
    if near:
        st.markdown("**Nearest concepts:** " + " · ".join(f"{ui.md(n['concept'])} ({n['score']:.3f})" for n in near))
    results_grid(results)


def duplicates_section(name: str) -> None:
    with st.expander("Near-duplicates in this dataset"):
        thr = st.slider("Similarity at least", 0.80, 1.00, 0.95, 0.01, key="vs_dup_threshold")
        if st.button("Find near-duplicates", key="vs_dup_find"):
            try:
                pairs = service.near_duplicates(user, name, thr, limit=200, opened=service.open_index(user, name))
            except Exception as exc:  # noqa: BLE001
                ui.show_error(exc)
                return
            st.write(f"{len(pairs)} pair(s) at or above {thr:.2f}" + (" (first 200)" if len(pairs) == 200 else ""))
            for p in pairs[:30]:
                a, b, s = st.columns([2, 2, 3])
                a.image(p["a_path"], width=120, caption=f"item {p['a']}: {ui.md(', '.join(p['a_concepts']))}")
                b.image(p["b_path"], width=120, caption=f"item {p['b']}: {ui.md(', '.join(p['b_concepts']))}")
                s.metric("Similarity", f"{p['score']:.3f}")


try:
    datasets = datasets_service.list_datasets(user)
    indexes = service.list_indexes(user)
except Exception as exc:  # noqa: BLE001
    ui.show_error(exc)
    st.stop()

if has_role(user, "member"):  # a viewer searches the indexes others shared
    build_section(datasets, expanded=not indexes)
indexes = service.list_indexes(user)  # again: a build just above may have added one
if not indexes:
    st.info("No index yet: build one above (the general embedder needs no training).")
    st.stop()
by_name = {f["name"] if f["owner"] == str(user) else f"{f['owner']}/{f['name']}": f for f in indexes}
names = list(by_name)
if ui.NEXT_SEARCH_ITEM_KEY in st.session_state:  # "Find similar" from the Datasets page: an index of the item's dataset
    try:
        item_ds = datasets_service.get_item(user, int(st.session_state[ui.NEXT_SEARCH_ITEM_KEY]))["dataset_id"]
        current = by_name.get(st.session_state.get("vs_index"))
        if current is None or current["dataset_id"] != item_ds:
            match = [n for n, f in by_name.items() if f["dataset_id"] == item_ds]
            if match:
                st.session_state["vs_index"] = match[0]
            else:
                st.warning("No index of that image's dataset yet: build one above.")
    except UserError as exc:
        st.session_state.pop(ui.NEXT_SEARCH_ITEM_KEY)
        ui.show_error(exc)
if st.session_state.get("vs_index") not in names:
    st.session_state["vs_index"] = names[0]
name = st.selectbox("Index", names, key="vs_index",
                    format_func=lambda n: f"{n} · embedder: {by_name[n]['model_label']}",
                    help="Each index searches with the embedder it was built with; a trained one ranks by your "
                    "concepts, the general one by ImageNet's.")
facts = by_name[name]
facts_section(name, facts)
ui.share_toggle(user, facts, lambda visibility: service.share_index(user, name, visibility), key="vs_share",
                help="Everyone on this server may then search this index and see the images it holds")
st.divider()
query_section(name, facts)
st.divider()
duplicates_section(name)
