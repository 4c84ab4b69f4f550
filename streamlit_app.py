"""The studio's entry point: who is signed in, then the pages their role can use (st.navigation over pages/)."""

import streamlit as st

from core import ui

st.set_page_config(page_title="Deep Training Studio", page_icon=":material/model_training:", layout="wide")
user = ui.current_user()
ui.identity_sidebar(user)
ui.navigation(user).run()
