"""Home: what the studio is, where it trains, and the steps from data to a searchable model."""

import streamlit as st

from core import ui

st.set_page_config(page_title="Deep Training Studio", page_icon=":material/model_training:", layout="wide")
user = ui.current_user()

st.title("Deep Training Studio")
if ui.reachable_without_sign_in():
    st.warning("This server is reachable from other machines and nobody signs in: everyone who reaches it acts as "
               "its one user, an admin. Configure sign-in (README, \"Team server\") or bind it to 127.0.0.1.",
               icon=":material/warning:")
st.write(
    "Train image classifiers, embedders and detectors on your own labelled images, on your own server. "
    "Pick a template, tune its hyperparameters within the template's limits, train in the background, "
    "evaluate the result, and search your images by visual similarity."
)

info = ui.device_info()
with st.container(border=True):
    st.subheader("Training device")
    if info.kind == "cuda":
        st.success(f"{info.label} — {info.note}", icon=":material/memory:")
    else:
        st.info(f"{info.label}. {info.note}", icon=":material/developer_board:")

st.subheader("Steps")
steps = [
    ("pages/1_Datasets.py", "1. Datasets",
     "Upload a zip, point at a server folder or import a manifest; read the health report."),
    ("pages/2_Train.py", "2. Train",
     "Choose a template, set its hyperparameters within the spec's bounds, start training."),
    ("pages/3_Jobs.py", "3. Jobs",
     "Follow live curves, cancel, resume or extend a run; jobs survive a closed tab."),
    ("pages/4_Models.py", "4. Models", "Confusion matrix, misclassified images, per-concept metrics, export."),
    ("pages/5_Visual_Search.py", "5. Visual search",
     "Index a dataset with a learned embedding and find similar images."),
]
cols = st.columns(len(steps))
for col, (page, label, text) in zip(cols, steps):
    with col, st.container(border=True):
        ui.link_page(page, label=label)
        st.caption(text)

ui.home_overview(user)
