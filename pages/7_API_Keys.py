"""API keys: create, name, list and revoke the keys programs use to act as you through the HTTP API
(``python -m core serve``); a new key is shown once."""

from __future__ import annotations

import time

import streamlit as st

from core import keys, ui
from core.errors import UserError

st.set_page_config(page_title="API keys", layout="wide")
st.title("API keys")
user = ui.current_user()
st.caption("A key lets a program (a notebook, a product, a script) predict, embed, search and read jobs through the "
           "HTTP API as you, with your role and what you see. Send it as `Authorization: Bearer KEY`. The studio keeps "
           "only a hash: a key is shown once, when it is created.")

new_key = st.session_state.pop("keys_new", None)
if new_key:
    st.success(f"Key {ui.md(new_key['name'])} created. Copy it now: it will not be shown again.")
    st.code(new_key["key"], language=None)
revoked = st.session_state.pop("keys_revoked", None)
if revoked:
    st.success(f"Key {ui.md(revoked)} revoked: programs using it are refused from now on.")

st.subheader("Create a key")
c1, c2, c3 = st.columns([3, 3, 1])
name = c1.text_input("Name", key="keys_name", placeholder="e.g. notebook, demo site",
                     help="What the key is for; unique among your active keys")
scopes = c2.multiselect("Limit to", list(keys.SCOPES), key="keys_scopes",
                        help="predict: predict and embed; search: search and embed; read: list models and indexes, "
                        "read jobs. None: everything you may do, queueing jobs included.")
if c3.button("Create", key="keys_create", type="primary", disabled=not name.strip()):
    try:
        st.session_state["keys_new"] = keys.create_key(user, name, scopes)
        st.rerun()
    except UserError as exc:
        ui.show_error(exc)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


st.subheader("Your keys")
rows = keys.list_keys(user)
if not rows:
    st.info("No keys yet.")
else:
    st.dataframe([{"name": k["name"], "key starts": k["prefix"] + "...", "limited to": ", ".join(k["scopes"]) or "all",
                   "created": when(k["created_at"]), "last used": when(k["last_used_at"]),
                   "state": "active" if k["active"] else f"revoked {when(k['revoked_at'])}"} for k in rows],
                 key="keys_table", hide_index=True)
    active = [k["name"] for k in rows if k["active"]]
    if active:
        r1, r2 = st.columns([3, 1])
        which = r1.selectbox("Revoke", active, key="keys_revoke_which")
        if r2.button("Revoke", key="keys_revoke", disabled=not which):
            try:
                keys.revoke_key(user, which)
                st.session_state["keys_revoked"] = which
                st.rerun()
            except UserError as exc:
                ui.show_error(exc)
