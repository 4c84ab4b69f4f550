"""The dataset map: PCA at once from the cached embeddings, UMAP from the map job, a selection over every point
(drawn or not), and on the Datasets page the selection reaching the grid, relabelled in one version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.data import atlas, quality
from core.data import service as datasets
from core.data.importer import import_dataset
from core.errors import UserError
from core.users import NotFound
from tests.conftest import caltech_slice
from tests.test_quality import CLASSES

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "1_Datasets.py")


def test_selection_boxes_and_lassos_take_every_point_inside():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1, 1, (100_000, 2)).astype(np.float32)
    event = {"box": [{"x": [0.5, -0.5], "y": [-0.25, 0.25], "xref": "x", "yref": "y"}],
             "lasso": [{"x": [0.6, 0.9, 0.9], "y": [0.6, 0.6, 0.9]}], "points": [], "point_indices": []}
    region = atlas.region_from_selection(event)
    assert region == {"boxes": [[-0.5, 0.5, -0.25, 0.25]], "lassos": [[[0.6, 0.6], [0.9, 0.6], [0.9, 0.9]]]}
    mask = atlas.select_region(xy, region)
    in_box = (np.abs(xy[:, 0]) <= 0.5) & (np.abs(xy[:, 1]) <= 0.25)
    in_triangle = (xy[:, 0] <= 0.9) & (xy[:, 1] >= 0.6) & (xy[:, 1] < xy[:, 0])  # below the diagonal of the square
    assert (mask == (in_box | in_triangle)).mean() > 0.9999  # points exactly on an edge may go either way
    assert 0.12 < in_box.mean() < 0.13 and mask.sum() > in_box.sum()
    assert atlas.region_from_selection({"box": [], "lasso": []}) is None
    assert not atlas.select_region(xy, None).any()
    with pytest.raises(UserError, match="boxes"):
        atlas.select_region(xy, {"boxes": [["a", 1]]})
    drawn = atlas.drawn_sample(len(xy))
    assert len(drawn) == atlas.MAX_DRAWN and np.all(np.diff(drawn) > 0)
    assert len(atlas.drawn_sample(10)) == 10


def test_pca_at_once_and_umap_from_the_job(tmp_path):
    import_dataset("local", caltech_slice(tmp_path / "src", CLASSES[:3], 5), "m", workers=1)
    assert atlas.dataset_map("local", "m") is None  # nothing embedded yet
    quality.find_issues_now("local", "m")
    pca = atlas.dataset_map("local", "m")
    assert pca is not None and pca["method"] == "pca" and pca["xy"].shape == (15, 2) and len(pca["concept"]) == 15
    assert sorted(set(pca["concept"])) == sorted(CLASSES[:3]) and set(pca["split"]) <= {"train", "val", "test"}
    assert atlas.dataset_map("local", "m", method="umap") is None  # not computed yet
    ds = datasets.get_dataset("local", "m")
    res = atlas.run_map({"owner": "local", "dataset": ds["id"], "model": "general"})
    assert res["points"] == 15 and not res["stopped"]
    umap = atlas.dataset_map("local", "m", method="umap")
    assert umap is not None and umap["xy"].shape == (15, 2) and np.isfinite(umap["xy"]).all()
    assert not np.allclose(umap["xy"], pca["xy"])
    with pytest.raises(UserError, match="Unknown map method"):
        atlas.dataset_map("local", "m", method="tsne")
    with pytest.raises(NotFound):
        atlas.dataset_map("bob", ds["id"])


def test_map_selection_reaches_the_grid_and_relabels_in_one_version(tmp_path):
    import_dataset("local", caltech_slice(tmp_path / "src", CLASSES[:3], 5), "m", workers=1)
    quality.find_issues_now("local", "m")
    pca = atlas.dataset_map("local", "m")
    assert pca is not None
    xy = pca["xy"]
    x0, x1 = float(np.percentile(xy[:, 0], 0)) - 1e-3, float(np.median(xy[:, 0]))
    region = {"boxes": [[x0, x1, float(xy[:, 1].min()) - 1e-3, float(xy[:, 1].max()) + 1e-3]], "lassos": []}
    want = sorted(int(i) for i in pca["ids"][atlas.select_region(xy, region)])
    assert 0 < len(want) < 15

    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any(c.value.startswith("Nothing selected") for c in at.caption)
    at.session_state["ds_map_region"] = region
    at.run()
    assert not at.exception
    assert any(f"{len(want)} image(s) selected" in m.value for m in at.markdown)
    captions = [str(i.proto.imgs[0].caption) for i in at.get("image") if i.proto.imgs]
    assert sorted(int(c.split()[1][1:-1]) for c in captions if c.startswith("selected #")) == want
    before = datasets.get_dataset("local", "m")["version"]
    at.text_input(key="ds_map_new_label").set_value("chosen")
    at.button(key="ds_map_relabel").click().run()
    assert not at.exception
    assert datasets.get_dataset("local", "m")["version"] == before + 1
    assert [i for i in want if datasets.get_item("local", i)["labels"] != ["chosen"]] == []
