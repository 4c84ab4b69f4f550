"""The Lite0 transfer embedder learns an embedding with its backbone frozen (a projection trained on the cached
features), and its evaluation shows the untrained general embedder's figures beside its own."""

from __future__ import annotations

import numpy as np

from core.templates import get_template
from tests.conftest import caltech_slice

TEMPLATE = "Studio_EfficientNetLite0_Transfer"
# look-alike concepts, where ImageNet's features alone mix them up: what a trained embedding is for
CLASSES = ("crocodile", "crocodile_head", "cougar_body", "cougar_face")


def test_the_trained_embedder_beats_the_general_one_on_held_out_images(tmp_path):
    from core.data.importer import import_dataset
    from core.evaluation import service
    from core.models.general import general_embedder
    from core.training import train

    import_dataset("local", str(caltech_slice(tmp_path / "src", CLASSES, per_class=20)), "looks", workers=1)
    result = train({"owner": "local", "dataset": "looks", "kind": "embedder", "template": TEMPLATE, "params": {},
                    "name": "learned", "seed": 0}, tmp_path / "run")
    assert result.model_id is not None
    evaluation = service.evaluate("local", "learned")
    base = evaluation["baseline"]
    # what training bought, on the validation split's images as queries against the rest (loosely: the benchmark,
    # bench/bench_retrieval.py --defaults, holds the real figure)
    assert evaluation["map_at_r"] > base["map_at_r"] + 0.05, (evaluation["map_at_r"], base["map_at_r"])  # 0.73, 0.53

    loaded = service.load_model(service.get("local", "learned"))
    images = service.open_images([r["path"] for r in evaluation["map"][:6]])
    mine, general = loaded.embed(images), general_embedder().embed(images)
    size = get_template("embedder", TEMPLATE).param("embeddings_size").default
    assert mine.shape == (6, size) and general.shape == (6, 1280)
    assert np.allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    # a different geometry, not the general embedding in other coordinates: the pairwise similarities change
    assert not np.allclose(mine @ mine.T, general @ general.T, atol=0.05)
