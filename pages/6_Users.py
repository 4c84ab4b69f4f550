"""Users (admins only): everyone who has signed in or acted through the command line, their role, storage and jobs;
change a role (stored: it overrides the default role)."""

from __future__ import annotations

import time

import streamlit as st

from core import accounts, ui
from core.errors import UserError
from core.users import ROLES

st.set_page_config(page_title="Users", layout="wide")
st.title("Users")
user = ui.current_user()
ui.require_page_role(user, "admin", "The Users page")

rows = accounts.list_users(user)
st.dataframe(
    [{"user": r["name"], "role": r["role"], "role from": r["role_from"], "storage (MB)": r["storage_bytes"] / 1024**2,
      "jobs": r["jobs"], "queued or running": r["jobs_active"], "signed in via": r["seen_via"],
      "last seen": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_seen"]))} for r in rows],
    key="users_table", hide_index=True,
    column_config={"storage (MB)": st.column_config.NumberColumn(format="%.1f")},
)
st.caption("Admins listed in the settings (`admins`) stay admins whatever is stored here; everyone else gets the "
           "default role (`default_role`) until a role is set below.")

st.subheader("Change a role")
c1, c2, c3 = st.columns([3, 2, 1])
names = [r["name"] for r in rows]
who = c1.selectbox("User", names, key="users_who")
current = next((r["role"] for r in rows if r["name"] == who), ROLES[-1])
role = c2.selectbox("Role", ROLES, index=ROLES.index(current), key="users_role",
                    help="admin: everything; member: import, label, train, build indexes, search, share; "
                    "viewer: browse, evaluate, search")
if c3.button("Save", key="users_save", type="primary", disabled=not who):
    try:
        accounts.set_role(user, who, role)
        st.session_state.pop(ui.USER_KEY, None)  # an admin who changed their own role sees it at once
        st.success(f"{ui.md(who)} is now {role}.")
        st.rerun()
    except UserError as exc:
        ui.show_error(exc)
