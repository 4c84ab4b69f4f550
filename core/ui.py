"""The one core module that imports Streamlit: shared widgets and cached loaders for the pages."""

from __future__ import annotations

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
