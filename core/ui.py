"""The one core module that imports Streamlit: shared widgets and cached loaders for the pages."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from core import device as _device
from core import settings
from core.errors import UserError
from core.paths import DEFAULT_USER
from core.text import human_bytes
from core.users import User

KIND_LABELS = {"classifier": "Visual Classifier", "embedder": "Visual Embedder", "detector": "Visual Detector"}

# Session-state keys that one page sets and another reads (or this module and a page): one name each, here.
USER_KEY = "_studio_user"  # the session's signed-in user, re-read every IDENTITY_REFRESH_S
NEXT_JOB_KEY = "jobs_select_next"  # a job just started (Train, Jobs' Extend): the Jobs page selects it
NEXT_SEARCH_ITEM_KEY = "vs_next_item"  # "Find similar" (Datasets, a search result): Visual Search queries it
# the Train page's widgets that prefill_train (a model's "train again") fills in
TRAIN_KIND_KEY, TRAIN_TEMPLATE_KEY = "train_kind_select", "train_template_select"
TRAIN_DATASET_KEY, TRAIN_PATIENCE_KEY, TRAIN_COMPILE_KEY = "train_dataset", "train_patience", "train_compile"


@st.cache_resource(show_spinner=False)
def device_info() -> _device.DeviceInfo:
    """Device facts, computed once per server (importing torch is slow)."""
    return _device.device_info()


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=])")
# GFM turns bare addresses into links after escapes are resolved (https://..., www...., a@b.c), so a backslash cannot
# stop it: a WORD JOINER (U+2060, invisible, zero width) after the scheme's colon, "www" and "@" does.
_AUTOLINK = re.compile(r"(?i):(?=//)|\bwww(?=\\\.)|@")
log = logging.getLogger("deeptrain")


def md(text: Any) -> str:
    """User-written text (names, labels, messages that quote them) made literal inside Streamlit markdown: every
    character markdown, Streamlit's ``:directives:`` or LaTeX would act on is escaped, so ``![](https://...)`` shows
    as those characters instead of making every viewer's browser fetch an image, and ``[x](url)`` makes no link.
    Bare addresses (``https://...``, ``www.``, ``a@b.c``) are kept from becoming links too. Newlines become spaces
    (one message, one line)."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    return _AUTOLINK.sub(lambda m: m.group(0) + "\u2060", escaped)


def show_error(exc: BaseException, prefix: str = "") -> None:
    """The one way pages show an error: a user error's message (after ``prefix``, text the page wrote, e.g. "Import
    refused, nothing was stored: "); anything else a short sentence with an error id, the traceback (server paths,
    SQL) going to the server's log under that id, never to the page."""
    if isinstance(exc, UserError):
        st.error(prefix + md(exc))
        return
    import uuid

    error_id = uuid.uuid4().hex[:8]
    log.error("error %s: %s", error_id, type(exc).__name__, exc_info=exc)
    st.error(f"Something went wrong on the server (error id {error_id}); the details are in the server's log "
             "under that id. Try again, or tell your admin the id.")


# ---------------------------------------------------------------- who is signed in
IDENTITY_REFRESH_S = 30.0  # how often a session re-reads its user's role (an admin's change applies within this)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def request_headers() -> Mapping[str, str]:
    """The headers of the browser's request to this session: the one place the studio reads them (tests replace
    this function to act as a reverse proxy)."""
    return st.context.headers


def _auth_section() -> dict | None:
    """The ``[auth]`` section of ``.streamlit/secrets.toml`` (Streamlit's OIDC sign-in), or None."""
    try:
        if not st.secrets.load_if_toml_exists():
            return None
        auth = st.secrets.get("auth")
    except Exception:  # noqa: BLE001 - an unreadable secrets file means no sign-in is configured here
        return None
    return dict(auth) if auth else None


def sign_in_mode() -> str:
    """How this server knows who is there: "oidc" (an ``[auth]`` section: st.login), "proxy" (the setting
    ``auth_header`` names a header a trusted reverse proxy sets), or "single" (one local user, no sign-in)."""
    if _auth_section():
        return "oidc"
    if settings.get("auth_header"):
        return "proxy"
    return "single"


def _sign_in_screen() -> None:
    """Nothing but the sign-in button(s) until the user has signed in with the identity provider."""
    st.title("Deep Training Studio")
    st.write("Sign in to continue.")
    auth = _auth_section() or {}
    providers = [k for k, v in auth.items() if isinstance(v, Mapping)] if "client_id" not in auth else []
    if not providers:
        st.button("Sign in", key="auth_sign_in", type="primary", on_click=st.login)
    for name in providers:
        st.button(f"Sign in with {name}", key=f"auth_sign_in_{name}", on_click=st.login, args=(name,))


def _no_proxy_identity() -> None:
    st.error(f"This server signs people in through its reverse proxy, which sets the header "
             f"{settings.get('auth_header')!r}; this request came without it. Open the studio through the proxy's "
             "address.")


def _signed_in_name(mode: str) -> str | None:
    if mode == "oidc":
        if not st.user.is_logged_in:
            return None
        name = st.user.get("email") or st.user.get("preferred_username") or st.user.get("sub")
        return name if isinstance(name, str) else None  # the claims are strings; st.user types them loosely
    if mode == "proxy":
        header = settings.get("auth_header").lower()
        return next((v.strip() for k, v in request_headers().items() if k.lower() == header and v.strip()), None)
    return DEFAULT_USER


def current_user() -> User:
    """The signed-in user with their role, resolved once per page run (and re-read every IDENTITY_REFRESH_S).

    Until someone has signed in, this shows the sign-in screen (or, behind a proxy that sent no identity, says so)
    and stops the page: nothing else of the studio shows.
    """
    import time

    from core import accounts

    mode = sign_in_mode()
    name = _signed_in_name(mode)
    if name is None:
        # The only page until someone signs in: a hidden navigation, so not even the page list shows.
        st.navigation([st.Page(_sign_in_screen if mode == "oidc" else _no_proxy_identity, title="Sign in",
                               default=True)], position="hidden").run()
        st.stop()
    cached = st.session_state.get(USER_KEY)
    if cached and cached[0] == (mode, name) and time.monotonic() - cached[2] < IDENTITY_REFRESH_S:
        user = cached[1]
    else:
        try:
            user = accounts.identify(name, mode)
        except UserError as exc:
            st.error(md(exc))
            st.stop()
        st.session_state[USER_KEY] = ((mode, name), user, time.monotonic())
    return user


def identity_sidebar(user: User) -> None:
    """Who is signed in, their role, and "Sign out" (the app draws it once per run, above the pages)."""
    mode = sign_in_mode()
    with st.sidebar:
        st.text(f"Signed in as {user.name} ({user.role})" if mode != "single" else f"Single-user mode: {user.name}")
        if mode == "oidc":
            st.button("Sign out", key="auth_sign_out", on_click=st.logout)
        elif mode == "proxy":
            st.caption("Sign out through your organisation's sign-in page.")


def reachable_without_sign_in() -> bool:
    """Whether anyone on the network reaches this server and acts as its one user (no sign-in, not on loopback)."""
    return sign_in_mode() == "single" and str(st.get_option("server.address") or "") not in LOOPBACK


PAGES = (  # file, title, icon, the role it needs
    ("pages/0_Home.py", "Home", ":material/home:", "viewer"),
    ("pages/1_Datasets.py", "Datasets", ":material/photo_library:", "viewer"),
    ("pages/2_Train.py", "Train", ":material/model_training:", "member"),
    ("pages/3_Jobs.py", "Jobs", ":material/monitoring:", "viewer"),
    ("pages/4_Models.py", "Models", ":material/deployed_code:", "viewer"),
    ("pages/5_Visual_Search.py", "Visual Search", ":material/image_search:", "viewer"),
    ("pages/7_API_Keys.py", "API keys", ":material/key:", "viewer"),
    ("pages/6_Users.py", "Users", ":material/group:", "admin"),
)


def pages_for(user: User) -> list[tuple[str, str, str, str]]:
    """The entries of PAGES ``user``'s role can use: a viewer has no Train page, only admins have Users."""
    from core.users import has_role

    return [p for p in PAGES if has_role(user, p[3])]


def navigation(user: User):
    """st.navigation over the pages ``user`` can use; Home is the default page."""
    return st.navigation([st.Page(f, title=t, icon=i, default=(f == PAGES[0][0])) for f, t, i, _ in pages_for(user)])


def require_page_role(user: User, role: str, what: str) -> None:
    """Stop a page (opened by its address) that ``user``'s role cannot use, with a plain message."""
    from core.users import has_role

    if not has_role(user, role):
        st.info(f"{what} needs the {role} role; you are a {user.role}. Ask an admin.")
        st.stop()


def home_overview(user: User) -> None:
    """The home page's overview: datasets, models and the job queue at a glance."""
    from core import jobs as _jobs
    from core.data import service as _datasets
    from core.evaluation import service as _models

    st.subheader("At a glance")
    summary = _jobs.queue_summary(user)
    cols = st.columns(3)
    cols[0].metric("Datasets", len(_datasets.dataset_names(user)))
    cols[1].metric("Models", len(_models.list_models(user)))
    cols[2].metric("Jobs running / queued", f"{summary['running']} / {summary['queued']}")
    for job in summary.get("active", []):
        st.caption(f"Running: job {job.get('id')} — {md(job.get('what', ''))}")


def prefill_train(kind: str, template: str, params: dict, dataset: str | None = None,
                  options: dict | None = None) -> None:
    """Fill the Train page's widgets with a configuration (Jobs page "Clone to new configuration").

    Sets the widget keys the Train page reads (kind, template, ``train_p_<param>``, dataset, and the training
    options' patience and compile) with values of the types its widgets expect, so the page opens showing exactly
    this configuration.
    """
    from core.templates import get_template

    st.session_state[TRAIN_KIND_KEY] = kind
    st.session_state[TRAIN_TEMPLATE_KEY] = template
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
        st.session_state[TRAIN_DATASET_KEY] = dataset
    from core.training.plan import training_options

    opts = training_options(options)  # the stored form, normalised as the engine reads it ("false" -> False, ...)
    st.session_state[TRAIN_PATIENCE_KEY] = opts["early_stopping_patience"] or 0
    st.session_state[TRAIN_COMPILE_KEY] = opts["compile"]


def check_upload(uploaded) -> None:
    """Refuse an upload larger than the setting ``max_upload_bytes``, naming it, its size and the limit."""
    limit = settings.get("max_upload_bytes")
    size = getattr(uploaded, "size", None)
    if size is None:
        size = len(uploaded.getvalue())
    if size > limit:
        raise UserError(f"{uploaded.name}: {human_bytes(size)} is more than one upload may be on this server "
                        f"({human_bytes(limit)}, max_upload_bytes); import a large archive from a server folder or "
                        "with `python -m core dataset import`")


def save_upload(uploaded, key: str, chunk_bytes: int = 1 << 20) -> Path:
    """Write an uploaded file to a temporary file under ``DEEPTRAIN_HOME/uploads`` in chunks; return its path.

    The caller deletes it when done. The suffix is kept (importers read it to tell a zip from a video). An upload
    over ``max_upload_bytes`` is refused before anything is written (UserError).
    """
    import tempfile

    from core import paths

    check_upload(uploaded)
    suffix = Path(uploaded.name).suffix.lower()[:10]
    uploaded.seek(0)
    with tempfile.NamedTemporaryFile(dir=paths.subdir("uploads"), suffix=suffix, delete=False) as out:
        while True:
            block = uploaded.read(chunk_bytes)
            if not block:
                break
            out.write(block)
    forget_upload(uploaded, key)
    return Path(out.name)


def forget_upload(uploaded, key: str) -> None:
    """Drop an upload's bytes from the server's memory once they are stored; ``key`` is its uploader's widget key.

    Streamlit keeps an uploaded file in its file manager until the session ends or the person removes it from the
    uploader, and each script run's widget value holds a view of the same bytes: three 500 MB uploads still held
    1.5 GB after their imports (bench/bench_upload_memory.py). This removes the file, the widget's stored values and
    this run's view; the page keeps the file's name and should give the uploader a new key for its next run."""
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is not None and Runtime.exists() and getattr(uploaded, "file_id", None):
        # remove_file is on MemoryUploadedFileManager (Streamlit's only one) but not on the protocol it is typed as
        Runtime.instance().uploaded_file_mgr.remove_file(  # type: ignore[attr-defined]
            ctx.session_id, uploaded.file_id)
    if key in st.session_state:
        del st.session_state[key]  # the values of earlier runs, each a view of the bytes
    uploaded.close()  # this run's view


def export_path(user: User, filename: str) -> Path:
    """A new path for a file offered to ``user`` for download: ``DEEPTRAIN_HOME/exports/<user>/<request>/<name>``, so
    two people (or two tabs) exporting the same name never overwrite each other's file."""
    import uuid

    from core import paths

    def safe(text: str) -> str:
        return re.sub(r"[^\w.+-]+", "_", text).strip("._") or "_"

    folder = paths.subdir("exports") / safe(user.name) / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / safe(filename)


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
    from core.users import can_change, has_role

    if not can_change(user, thing):
        st.caption(f"Shared by {md(thing['owner'])} with the team: you can use it; only its owner can change it.")
        return
    if not has_role(user, "member"):
        st.caption(f"Sharing needs the member role; you are a {user.role}.")
        return
    shared = st.toggle("Shared with the team", value=thing["visibility"] == "team", key=key, help=help)
    if shared != (thing["visibility"] == "team"):
        share("team" if shared else "private")
        st.rerun()
