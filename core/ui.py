"""The one core module that imports Streamlit: shared widgets and cached loaders for the pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import streamlit as st

from core import device as _device
from core.errors import UserError

KIND_LABELS = {"classifier": "Visual Classifier", "embedder": "Visual Embedder", "detector": "Visual Detector"}


@st.cache_resource(show_spinner=False)
def device_info() -> _device.DeviceInfo:
    """Device facts, computed once per server (importing torch is slow)."""
    return _device.device_info()


def show_error(exc: BaseException) -> None:
    """A clear message for a user error; anything else gets a plain sentence and the traceback folded below."""
    if isinstance(exc, UserError):
        st.error(str(exc))
        return
    import traceback

    st.error(f"Something went wrong: {type(exc).__name__}: {exc}")
    with st.expander("Details"):
        st.code("".join(traceback.format_exception(exc)))


def current_user() -> str:
    """The acting user (a local default until sign-in exists)."""
    from core.paths import DEFAULT_USER

    return st.session_state.setdefault("user", DEFAULT_USER)


def home_overview() -> None:
    """The home page's overview: datasets, models and the job queue at a glance."""
    from core import jobs as _jobs
    from core.data import service as _datasets
    from core.evaluation import service as _models

    user = current_user()
    st.subheader("At a glance")
    summary = _jobs.queue_summary(user)
    cols = st.columns(3)
    cols[0].metric("Datasets", len(_datasets.dataset_names(user)))
    cols[1].metric("Models", len(_models.list_models(user)))
    cols[2].metric("Jobs running / queued", f"{summary['running']} / {summary['queued']}")
    for job in summary.get("active", []):
        st.caption(f"Running: job {job.get('id')} — {job.get('what', '')}")


def prefill_train(kind: str, template: str, params: dict, dataset: str | None = None,
                  options: dict | None = None) -> None:
    """Fill the Train page's widgets with a configuration (Jobs page "Clone to new configuration").

    Sets the widget keys the Train page reads (kind, template, ``train_p_<param>``, dataset, and the training
    options' patience and compile) with values of the types its widgets expect, so the page opens showing exactly
    this configuration.
    """
    from core.templates import get_template

    st.session_state["train_kind_select"] = kind
    st.session_state["train_template_select"] = template
    for spec in get_template(kind, template).params:
        if spec.name not in params:
            continue
        value = params[spec.name]
        if spec.widget == "toggle":
            value = bool(value)
        elif spec.type == "int":
            value = int(value)
        elif spec.type == "float":
            value = float(value)
        st.session_state["train_p_" + spec.name] = value
    if dataset:
        st.session_state["train_dataset"] = dataset
    from core.training.engine import training_options

    opts = training_options(options)  # the stored form, normalised as the engine reads it ("false" -> False, ...)
    st.session_state["train_patience"] = opts["early_stopping_patience"] or 0
    st.session_state["train_compile"] = opts["compile"]


def save_upload(uploaded, chunk_bytes: int = 1 << 20) -> Path:
    """Write an uploaded file to a temporary file under ``DEEPTRAIN_HOME/uploads`` in chunks; return its path.

    The caller deletes it when done. The suffix is kept (importers read it to tell a zip from a video).
    """
    import tempfile
    from pathlib import Path

    from core import paths

    suffix = Path(uploaded.name).suffix.lower()[:10]
    uploaded.seek(0)
    with tempfile.NamedTemporaryFile(dir=paths.subdir("uploads"), suffix=suffix, delete=False) as out:
        while True:
            block = uploaded.read(chunk_bytes)
            if not block:
                break
            out.write(block)
    return Path(out.name)


def export_path(filename: str) -> Path:
    """A path under ``DEEPTRAIN_HOME/exports`` for a file offered for download."""
    import re

    from core import paths

    return paths.subdir("exports") / re.sub(r"[^\w.+-]+", "_", filename)


# ---------------------------------------------------------------- visual search: index and model, once per server
@st.cache_resource(show_spinner=False, max_entries=8)
def _search_index(owner: str, name: str, stamp: tuple):
    from core.search import service

    return service.open_index(owner, name)


def search_index(owner: str, name: str):
    """The opened index (shared by every session; reloaded when a sync or rebuild changes its files)."""
    from core.search import service

    return _search_index(owner, name, service.index_stamp(owner, name))


@st.cache_resource(show_spinner="Loading the embedding model...", max_entries=4)
def _search_embedder(key: str, stamp: tuple):
    from core.search import embed

    return embed.load_embedder(key)


def search_embedder(key: str):
    """The embedding model of an index (shared by every session; thread-safe for concurrent queries)."""
    from core.search import embed

    return _search_embedder(key, embed.model_stamp(key))


def link_page(page: str, label: str, icon: str | None = None) -> None:
    """A link to another page of the app; plain text naming the page when this page runs on its own (no app)."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        st.caption(f"{label}: open it from the app's sidebar.")


def go_to_page(page: str, label: str) -> None:
    """Switch to another page of the app; when this page runs on its own, say where to go instead."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.switch_page(page)
    except StreamlitAPIException:
        st.info(f"Done: open the {label} page from the app's sidebar.")


def share_toggle(user, thing: dict, share: Callable[[str], Any], key: str, help: str) -> None:
    """The "Shared with the team" switch of a thing the user owns (``share(visibility)`` applies it); for someone
    else's team thing, a note naming its owner instead."""
    from core.users import can_change

    if not can_change(user, thing):
        st.caption(f"Shared by {thing['owner']} with the team: you can use it; only its owner can change it.")
        return
    shared = st.toggle("Shared with the team", value=thing["visibility"] == "team", key=key, help=help)
    if shared != (thing["visibility"] == "team"):
        share("team" if shared else "private")
        st.rerun()
