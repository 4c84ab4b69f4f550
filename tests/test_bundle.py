"""The portable search bundle: `python -m core index export` writes what a laptop needs to search an index with
onnxruntime, FAISS, PIL and NumPy only, and its example script finds what `python -m core search` finds."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from tests.conftest import CALTECH
from tests.model_support import make_trained_home

QUERIES = ("accordion/image_0012.jpg", "anchor/image_0011.jpg", "ant/image_0009.jpg")  # not in the dataset


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory) -> Path:
    return make_trained_home(tmp_path_factory, "bundle")


@pytest.fixture
def home(trained_home, monkeypatch) -> Path:
    monkeypatch.setenv("DEEPTRAIN_HOME", str(trained_home))
    return trained_home


@pytest.fixture
def queries() -> list[str]:
    paths = [CALTECH / "101_ObjectCategories" / p for p in QUERIES]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    return [str(p) for p in paths]


def test_the_bundles_example_finds_the_studios_top_10(home, tmp_path, queries, capsys):
    from core.cli import main
    from core.data import service as data
    from core.search import service as search
    from core.store import datasets as ds_store

    search.build_index_now("local", "ds", "embedder", "ds-emb")
    records = ds_store.dataset_records(ds_store.get_dataset("local", "ds")["id"])
    formula = '=HYPERLINK("http://x","y")'  # a label a spreadsheet would run: neutralised in items.csv
    ds_store.set_item_labels(records[0]["item_id"], [formula, *records[0]["labels"]])
    data.delete_items("local", "ds", [records[1]["item_id"]])  # since the build: the studio's search leaves it out

    assert main(["index", "export", "ds-emb", "--out", str(tmp_path / "bundle.zip"), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["index"] == "ds-emb" and done["items"] == len(records) - 1 and done["backend"] == "flat"
    folder = tmp_path / "bundle"
    with zipfile.ZipFile(done["path"]) as zf:
        assert sorted(zf.namelist()) == sorted(done["members"])
        zf.extractall(folder)
    assert "from core" not in (folder / "search_example.py").read_text()
    rows = list(csv.reader(io.StringIO((folder / "items.csv").read_text())))
    assert rows[0] == ["item_id", "labels", "original_file"]
    by_item = {int(r[0]): r for r in rows[1:]}
    assert records[1]["item_id"] not in by_item and len(by_item) == len(records) - 1
    assert by_item[records[0]["item_id"]][1].startswith("'" + formula)
    assert by_item[records[2]["item_id"]][2] == records[2]["source_path"]  # the original file name
    facts = json.loads((folder / "bundle.json").read_text())
    assert facts["items"] == len(records) - 1 and facts["dim"] == done["dim"]

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    ran = subprocess.run([sys.executable, "-I", "search_example.py", *queries, "--json"], check=False,
                         capture_output=True, text=True, cwd=folder, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout)
    assert [f["photo"] for f in found] == queries
    for query, bundle in zip(queries, found):
        assert main(["search", "ds-emb", query, "--json"]) == 0
        studio = json.loads(capsys.readouterr().out)
        assert len(studio) == 10
        assert [r["item"] for r in bundle["results"]] == [r["item"] for r in studio]
        assert [r["labels"] for r in bundle["results"]] == [r["concepts"] for r in studio]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(bundle["results"], studio)) <= 1e-4


def test_a_bundle_needs_its_model_to_be_visible(home, tmp_path, capsys):
    """A team index built with a private model: others may search it on the server, but a bundle would hand them
    the model's weights."""
    from core.cli import main
    from core.search import service as search
    from core.search.bundle import export_bundle

    search.build_index_now("local", "ds", "embedder", "ds-team")
    search.share_index("local", "ds-team", "team")
    with pytest.raises(UserError, match="not shared with you"):
        export_bundle("bob", "local/ds-team", tmp_path / "b.zip")
    assert not (tmp_path / "b.zip").exists()
    assert main(["index", "delete", "ds-team", "--json"]) == 0  # --json prints what was done
    assert json.loads(capsys.readouterr().out) == {"deleted": "index", "name": "ds-team"}


@pytest.mark.parametrize("backend", ["flat", "ivf", "numpy"])
def test_the_plain_faiss_copy_ranks_as_the_index_does(backend):
    """The bundle's FAISS file (ids = row numbers) gives the studio index's results, IVF lists and nprobe included."""
    import faiss

    from core.search import index as vindex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(10_000, 13_000))
    index = vindex.build(ids, vectors, backend=backend)
    order = np.argsort(ids)
    copy = faiss.deserialize_index(faiss.serialize_index(index.plain_faiss(vectors[order])))
    queries = vectors[:40] + 0.2 * rng.standard_normal((40, 32)).astype(np.float32)
    scores, found = index.search(queries, 10)
    got_scores, rows = copy.search(queries, 10)
    assert np.array_equal(ids[order][rows], found)
    np.testing.assert_allclose(got_scores, scores, atol=1e-6)
    if backend == "ivf":
        assert copy.nprobe == index.nprobe < index.nlist  # approximate, and still the same answers
