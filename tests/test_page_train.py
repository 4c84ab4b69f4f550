"""AppTest of the Train page's configuration: for each template the widgets carry exactly the spec's bounds, switching
templates resets them, invalid settings are explained, and nothing raises."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.templates import get_template, list_templates
from tests.spec_seeds import SEEDS, spec_bounds

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "2_Train.py")
TEMPLATES = [(t.kind, t.name) for t in list_templates()]
SPEC = spec_bounds() if SEEDS.is_dir() else {}


def _open(kind: str, name: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    if kind != "classifier":
        at.radio(key="train_kind_select").set_value(kind).run()
    if at.selectbox(key="train_template_select").value != name:
        at.selectbox(key="train_template_select").set_value(name).run()
    assert not at.exception, at.exception
    return at


def _widget(at: AppTest, key: str):
    for group in (at.slider, at.number_input, at.toggle, at.selectbox):
        for w in group:
            if w.key == key:
                return w
    raise AssertionError(f"no widget with key {key}")


def _close(a, b) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), abs_tol=1e-12)


@pytest.mark.parametrize("kind,name", TEMPLATES, ids=[f"{k}-{n}" for k, n in TEMPLATES])
def test_widgets_carry_the_spec_bounds(kind, name):
    at = _open(kind, name)
    template = get_template(kind, name)
    listed = SPEC.get((kind, name), {})
    for spec in template.params:
        key = f"train_p_{spec.name}"
        w = _widget(at, key)
        assert w.help == spec.help
        if spec.widget == "toggle":
            assert type(w).__name__ == "Toggle" and bool(w.value) == bool(spec.default)
            continue
        if spec.widget == "select":
            assert type(w).__name__ == "Selectbox" and w.options == list(spec.choices) and w.value == spec.default
            continue
        if spec.widget == "slider":
            assert type(w).__name__ == "Slider"
            assert _close(w.min, spec.min) and _close(w.max, spec.max) and _close(w.step, spec.step)
        else:
            assert type(w).__name__ == "NumberInput"
            assert (w.min is None) == (spec.min is None) and (w.min is None or _close(w.min, spec.min))
            assert (w.max is None) == (spec.max is None) and (w.max is None or _close(w.max, spec.max))
        assert _close(w.value, spec.default)
        # and against the specification's own text, where it gives the bound
        for field, value in listed.get(spec.name, {}).items():
            if field == "step" and spec.is_flag:
                continue
            assert _close(getattr(w, field), value), (spec.name, field, getattr(w, field), value)
    # the derived learning rate, the schedule chart and the validated JSON are shown
    assert at.session_state["train_params"] == template.defaults()
    assert (at.session_state["train_kind"], at.session_state["train_template"]) == (kind, name)
    assert at.metric and at.json
    assert not at.error


def test_spec_slider_bounds_are_sliders():
    """Where the spec gives min, max and step the page draws a slider (integer for counts); a minimum only: a number
    input bounded below, in scientific notation."""
    at = _open("classifier", "Clarifai_InceptionV2")
    s = at.slider(key="train_p_image_size")
    assert (s.min, s.max, s.step, s.value) == (32, 1024, 16, 256) and isinstance(s.value, int)
    assert at.slider(key="train_p_num_epochs").max == 200
    lr = at.number_input(key="train_p_per_item_lrate")
    assert lr.min == 0 and lr.max is None and "e" in lr.proto.format
    assert "Logistic regression (multi-label)" in at.toggle(key="train_p_logreg").label
    at.toggle(key="train_p_logreg").set_value(False).run()
    assert "Softmax (mutually exclusive)" in at.toggle(key="train_p_logreg").label
    assert at.session_state["train_params"]["logreg"] == 0


def test_switching_templates_resets_the_widgets():
    at = _open("classifier", "Clarifai_ResNext")
    at.slider(key="train_p_batch_size").set_value(17).run()
    at.slider(key="train_p_image_size").set_value(512).run()
    assert at.session_state["train_params"]["batch_size"] == 17
    at.selectbox(key="train_template_select").set_value("Clarifai_InceptionV2").run()
    assert at.slider(key="train_p_batch_size").value == 64 and at.slider(key="train_p_image_size").value == 256
    at.slider(key="train_p_batch_size").set_value(9).run()
    at.selectbox(key="train_template_select").set_value("Clarifai_ResNext").run()
    assert at.slider(key="train_p_batch_size").value == 64
    assert at.session_state["train_params"] == get_template("classifier", "Clarifai_ResNext").defaults()
    # switching the kind too: the detector's own bounds and defaults
    at.radio(key="train_kind_select").set_value("detector").run()
    assert not at.exception
    assert at.selectbox(key="train_template_select").value == "Studio_EfficientNetLite0_RetinaNet"  # offline weights
    s = at.slider(key="train_p_image_size")
    assert (s.min, s.max, s.step, s.value) == (128, 1024, 32, 320)
    at.selectbox(key="train_template_select").set_value("Studio_RetinaNet").run()
    assert at.slider(key="train_p_image_size").value == 512
    assert at.session_state["train_kind"] == "detector"


def test_reset_to_defaults():
    at = _open("embedder", "Clarifai_ResNet_AngularMargin")
    at.slider(key="train_p_embeddings_size").set_value(128).run()
    at.number_input(key="train_p_angular_margin").set_value(0.3).run()
    assert at.session_state["train_params"]["embeddings_size"] == 128
    at.button(key="train_reset").click().run()
    assert at.slider(key="train_p_embeddings_size").value == 512
    assert at.session_state["train_params"]["angular_margin"] == 0.5


def test_network_limit_is_explained_and_blocks_the_config():
    at = _open("classifier", "Clarifai_InceptionBatchNorm")
    assert at.slider(key="train_p_image_size").min == 32  # the spec's bound stays on the widget
    at.slider(key="train_p_image_size").set_value(64).run()
    assert not at.exception
    assert any("75 px" in e.value for e in at.error)
    assert at.session_state["train_params"] is None
    at.slider(key="train_p_image_size").set_value(80).run()
    assert not at.error and at.session_state["train_params"]["image_size"] == 80


def test_learning_rate_follows_the_batch_size():
    at = _open("classifier", "Clarifai_InceptionV2")
    at.slider(key="train_p_batch_size").set_value(128).run()
    assert at.metric[0].value == f"{128 * 7.8125e-05:.4e}"
