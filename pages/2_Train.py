"""Train: pick a template type and a template, read what it is, and set every hyperparameter within the spec's bounds.

Widgets follow the catalog (core/templates): min, max and step -> slider; a minimum only (learning rates) -> number
input bounded below in scientific notation; bounds without a step -> bounded number input; choices -> select box;
0/1 flags and booleans -> toggle. The validated configuration is left in st.session_state["train_params"] (None while
invalid) with st.session_state["train_kind"] and ["train_template"] for the launch section at the bottom.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st

from core import jobs, ui
from core.data import service as datasets
from core.errors import UserError
from core.templates import KIND_LABELS, KINDS, ParamSpec, get_template, list_templates, validate
from core.templates.schedule import base_lrate, lr_curve, steps_per_epoch

PARAM_KEY = "train_p_"  # every hyperparameter widget's key is PARAM_KEY + the parameter's name
COMPILE_LABELS: dict[Any, str] = {"auto": "Auto (runs over 30 min)", True: "Always", False: "Never"}


def _reset_params() -> None:
    """Forget every hyperparameter widget's value, so the next run draws them at the template's defaults."""
    for key in [k for k in st.session_state if str(k).startswith(PARAM_KEY)]:
        del st.session_state[key]


def _on_kind_change() -> None:
    """The new kind's first template, set (not just forgotten): a browser otherwise keeps showing the old kind's
    template in the box while the page describes the new one."""
    _reset_params()
    st.session_state[ui.TRAIN_TEMPLATE_KEY] = list_templates(st.session_state[ui.TRAIN_KIND_KEY])[0].name


def _label(spec: ParamSpec) -> str:
    return f"{spec.name.replace('_', ' ').capitalize()} (`{spec.name}`)"


def _param_widget(spec: ParamSpec) -> Any:
    """One hyperparameter's widget, bounded exactly as its spec; returns the widget's value."""
    key = PARAM_KEY + spec.name
    if spec.widget == "toggle":
        if spec.flag_labels:  # a 0/1 flag such as logreg: the label says what the current setting means
            on = bool(st.session_state.get(key, bool(spec.default)))
            label = spec.flag_labels[0] if on else spec.flag_labels[1]
            value = st.toggle(f"{label} (`{spec.name}` = {int(on)})", value=bool(spec.default), key=key,
                              help=spec.help)
            return int(value)
        return st.toggle(_label(spec), value=bool(spec.default), key=key, help=spec.help)
    if spec.widget == "select":
        options = list(spec.choices or ())
        return st.selectbox(_label(spec), options, index=options.index(spec.default), key=key, help=spec.help)
    if spec.widget == "slider":
        cast = int if spec.type == "int" else float
        return st.slider(_label(spec), min_value=cast(spec.min), max_value=cast(spec.max), step=cast(spec.step),
                         value=cast(spec.default), key=key, help=spec.help)
    if spec.type == "int":
        return st.number_input(_label(spec), min_value=int(spec.min) if spec.min is not None else None,
                               max_value=int(spec.max) if spec.max is not None else None, step=1,
                               value=int(spec.default), key=key, help=spec.help)
    scientific = spec.max is None or abs(spec.default) < 0.01
    button_step = (abs(spec.default) / 10 if spec.default else 1e-4) if scientific else 0.01
    return st.number_input(_label(spec), min_value=float(spec.min) if spec.min is not None else None,
                           max_value=float(spec.max) if spec.max is not None else None, value=float(spec.default),
                           step=button_step, format="%.4e" if scientific else "%.3f", key=key, help=spec.help)


st.set_page_config(page_title="Train", layout="wide")
st.title("Train")
user = ui.current_user()
ui.require_page_role(user, "member", "Training")
st.caption("Pick a template type and a template, then set its hyperparameters within the specification's bounds.")

kind = st.radio("Template type", KINDS, format_func=lambda k: KIND_LABELS[k], horizontal=True,
                key=ui.TRAIN_KIND_KEY, on_change=_on_kind_change)
name = st.selectbox("Template", [t.name for t in list_templates(kind)], key=ui.TRAIN_TEMPLATE_KEY,
                    on_change=_reset_params)
template = get_template(kind, name)

st.markdown(template.description)
st.markdown(f"**Network built:** {template.network}")
st.markdown(f"**Weights:** {template.weights}")
if template.embedding_dim is not None:
    st.markdown(f"**Embedding dimension:** {template.embedding_dim}")
elif template.has("embeddings_size"):
    st.markdown("**Embedding dimension:** set by `embeddings_size`")
if template.notes:
    st.caption(template.notes)

st.subheader("Hyperparameters")
st.button("Reset to defaults", key="train_reset", on_click=_reset_params)
values: dict[str, Any] = {}
columns = st.columns(2)
for i, spec in enumerate(template.params):
    with columns[i % 2]:
        values[spec.name] = _param_widget(spec)
        if spec.narrow_min is not None:
            st.caption(f"This template needs `{spec.name}` of at least {spec.narrow_min}: {spec.narrow_reason}.")

params: dict[str, Any] | None
try:
    params = validate(kind, name, values)
except UserError as exc:
    ui.show_error(exc)
    params = None
st.session_state["train_kind"] = kind
st.session_state["train_template"] = name
st.session_state["train_params"] = params

if params is not None:
    st.subheader("Learning rate")
    lrate = base_lrate(kind, name, params)
    if "per_item_lrate" in params:
        formula = f"batch_size x per_item_lrate = {params['batch_size']} x {params['per_item_lrate']:.4e}"
    elif "per_128_lrate" in params:
        formula = f"per_128_lrate x batch_size / 128 = {params['per_128_lrate']:.4e} x {params['batch_size']} / 128"
    else:
        formula = "the template's lrate"
    st.metric("lrate (per step)", f"{lrate:.4e}", help=formula)
    st.caption(f"lrate = {formula}")
    train_items = st.number_input(
        "Training images (to draw the curve; the dataset's own count is used when training)", min_value=1,
        value=1000, step=100, key="train_curve_items",
        help="Steps per epoch = num_items_per_epoch (or this count when 0) / batch_size, rounded up.",
    )
    spe = steps_per_epoch(kind, name, params, int(train_items))
    curve = lr_curve(kind, name, params, spe)
    fig = go.Figure(go.Scatter(x=[e for e, _ in curve], y=[lr for _, lr in curve], mode="lines", name="lrate"))
    fig.update_layout(xaxis_title="epoch", yaxis_title="learning rate", height=320,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title=f"{template.schedule} schedule, {spe} steps per epoch")
    fig.update_yaxes(rangemode="tozero")  # a constant rate is a flat line above zero, not the middle of the chart
    st.plotly_chart(fig, key="train_lr_chart")

    st.subheader("Configuration")
    st.json({"kind": kind, "template": name, "params": params})

# ------------------------------------------------------------------------------------------------ start training
# The dataset picker and the "Start training" button. They read st.session_state["train_params"] (validated
# params, None while invalid), ["train_kind"] and ["train_template"], set above.
st.subheader("Start training")
launch_owner = user
launch_names = datasets.dataset_names(launch_owner)  # own ones, then the team's as owner/name
if not launch_names:
    st.info("No dataset yet: import one on the Datasets page, then come back to start training.")
    ui.link_page("pages/1_Datasets.py", "Go to Datasets", ":material/photo_library:")
else:
    launch_dataset = st.selectbox("Dataset", launch_names, key=ui.TRAIN_DATASET_KEY)
    launch_model_name = st.text_input("Model name (optional)", key="train_model_name",
                                      help="Unique among your models; left empty, one is made from the template.")
    with st.expander("Training options"):
        launch_patience = st.number_input(
            "Early stopping patience (epochs)", min_value=0, max_value=1000, value=0, step=1, key=ui.TRAIN_PATIENCE_KEY,
            help="Stop when the validation metric has not improved for this many epochs and keep the best epoch's "
                 "weights; 0: off, every epoch runs.")
        launch_compile = st.radio(
            "Compile the network (torch.compile)", list(COMPILE_LABELS), key=ui.TRAIN_COMPILE_KEY, horizontal=True,
            format_func=COMPILE_LABELS.get,
            help="Compiling the training forward pass takes ~80 s on a 2-core CPU, then each step runs faster "
                 "(1.1-1.2x for resnet50, bench/README.md). Auto measures the first steps, compiles when more than "
                 "30 minutes of training are left and keeps it only if the compiled steps are faster. A frozen "
                 "backbone trains on cached features and never compiles.")
    launch_options = {k: v for k, v in (("early_stopping_patience", int(launch_patience) or None),
                                        ("compile", None if launch_compile == "auto" else launch_compile))
                      if v is not None}
    if st.button("Start training", key="train_start", type="primary", disabled=params is None,
                 icon=":material/rocket_launch:",
                 help="Validates the configuration and queues a background job; you can close the tab."):
        try:
            launch_job = jobs.submit(launch_owner, "train", {
                "dataset": launch_dataset, "kind": st.session_state["train_kind"],
                "template": st.session_state["train_template"], "params": st.session_state["train_params"],
                "name": launch_model_name.strip() or None, **({"options": launch_options} if launch_options else {}),
            })
            st.session_state["train_last_job"] = launch_job
            st.session_state[ui.NEXT_JOB_KEY] = launch_job
        except UserError as exc:
            ui.show_error(exc)
    if st.session_state.get("train_last_job"):
        st.success(f"Job {st.session_state['train_last_job']} is queued; it runs in the background.")
        ui.link_page("pages/3_Jobs.py", f"Follow job {st.session_state['train_last_job']} on the Jobs page",
                     ":material/monitoring:")
