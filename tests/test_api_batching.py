"""Images of requests that arrive together run through the network together: ``LoadedModel.predict_together`` gives
each caller exactly its own rows, equal to predicting alone, in fewer forward passes than calls."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from core.models.io import BATCH, LoadedModel

TEMPLATE = "Studio_EfficientNetLite0_Transfer"


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    import torch

    from core.models.networks import build_network
    from core.models.preprocess import preprocess_config
    from core.templates import validate

    torch.manual_seed(0)
    params = validate("classifier", TEMPLATE, {"pretrained_weights": "None", "image_size": 64})
    config = {"kind": "classifier", "template": TEMPLATE, "params": params, "concepts": ["a", "b", "c"],
              "preprocess": preprocess_config("classifier", TEMPLATE, params)}
    return LoadedModel(config, build_network("classifier", TEMPLATE, params, 3))


def images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


def test_concurrent_calls_share_passes_and_get_their_own_rows(model):
    calls = [images(1 + i % 3, seed=i) for i in range(8)]
    alone = [model.predict(c) for c in calls]
    before = model._together.passes
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(calls))

    def call(i: int) -> None:
        start.wait()
        got[i] = model.predict_together(calls[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, rows in got.items():
        assert rows.shape == alone[i].shape and np.allclose(rows, alone[i], atol=1e-5), i
    assert len(got) == len(calls)
    assert 1 <= model._together.passes - before < len(calls)  # several calls went through one pass


def test_a_pass_takes_at_most_a_batch_and_a_large_call_alone(model):
    big = images(BATCH + 3, seed=99)
    before = model._together.passes
    rows = model.predict_together(big)
    assert rows.shape == (BATCH + 3, 3) and model._together.passes == before + 1
    assert np.allclose(rows, model.predict(big), atol=1e-5)


def test_an_error_reaches_every_caller_of_the_pass_and_the_next_pass_runs():
    from core.models.io import _Together

    together = _Together()

    def broken(items):
        raise UserError("cannot predict")

    with pytest.raises(UserError, match="cannot predict"):
        together.run([1, 2], broken)
    assert list(together.run([1, 2, 3], lambda items: np.array(items) * 2)) == [2, 4, 6]
