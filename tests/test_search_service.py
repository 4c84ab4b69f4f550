"""Visual search on a real Caltech-101 slice (18 photos, 3 classes) with the general embedder at its normal size."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from core import loaded
from core.cli import main
from core.data.importer import import_dataset
from core.errors import UserError
from core.search import embed, service
from core.search import index as vindex
from core.store import datasets as ds_store
from tests.conftest import caltech_slice


@pytest.fixture
def cal(small_folder) -> dict:
    """Dataset "cal" (accordion, anchor, ant: 6 each) and its general-embedder index "cal-general"."""
    import_dataset("local", small_folder, "cal", workers=1)
    res = service.build_index_now("local", "cal")
    assert res == {"index_id": res["index_id"], "name": "cal-general", "count": 18, "stopped": False}
    ds = ds_store.get_dataset("local", "cal")
    return {"name": res["name"], "records": ds_store.dataset_records(ds["id"]), "dataset": ds}


def _by_concept(records: list[dict], concept: str) -> list[dict]:
    return [r for r in records if r["labels"] == [concept]]


def test_query_by_item_upload_and_concept(cal, capsys):
    recs = cal["records"]
    facts = service.index_facts("local", cal["name"])
    assert facts["dim"] == 1280 and facts["count"] == 18 and facts["index_type"] == "flat" and facts["exact"]
    assert facts["model"] == "general" and not facts["stale"] and facts["memory_bytes"] > 18 * 1280 * 4

    ant = _by_concept(recs, "ant")[0]
    res = service.search("local", cal["name"], item_id=ant["item_id"], k=5)
    assert len(res) == 5 and ant["item_id"] not in [r["item"] for r in res]  # the query item is left out
    assert [r["score"] for r in res] == sorted([r["score"] for r in res], reverse=True)
    assert sum(r["concepts"] == ["ant"] for r in res) >= 3, res

    # an upload (bytes of the stored photo) finds that photo first, with cosine 1
    up = open(ant["path"], "rb").read()
    res = service.search("local", cal["name"], image=up, k=3)
    assert res[0]["item"] == ant["item_id"] and res[0]["score"] == pytest.approx(1.0, abs=1e-4)

    # by concept: the mean embedding of the concept's photos finds mostly that concept
    for concept in ("accordion", "anchor", "ant"):
        res = service.search("local", cal["name"], concept=concept, k=6)
        assert sum(concept in r["concepts"] for r in res) >= 4, (concept, res)

    # a concept filter keeps only that concept, even when the query is another concept
    res = service.search("local", cal["name"], concept="accordion", k=4, concept_filter="anchor")
    assert len(res) == 4 and all(r["concepts"] == ["anchor"] for r in res)

    near = service.nearest_concepts("local", cal["name"], item_id=_by_concept(recs, "accordion")[0]["item_id"])
    assert near[0]["concept"] == "accordion" and [n["images"] for n in near] == [6, 6, 6]

    assert main(["search", cal["name"], ant["path"], "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0] == {"item": ant["item_id"], "concepts": ["ant"], "score": pytest.approx(1.0, abs=1e-4)}
    assert set(out[1]) == {"item", "concepts", "score"}
    assert main(["search", cal["name"], "--item", str(ant["item_id"]), "--k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["index", "list", "--json"]) == 0
    assert [f["name"] for f in json.loads(capsys.readouterr().out)] == ["cal-general"]


def test_refusals_name_what_is_wrong(cal, capsys, tmp_path):
    name = cal["name"]
    with pytest.raises(UserError, match="item 999999 is not in index"):
        service.search("local", name, item_id=999999)
    with pytest.raises(UserError, match="concept 'zebra'.*concepts: accordion, anchor, ant"):
        service.search("local", name, concept="zebra")
    with pytest.raises(UserError, match="exactly one"):
        service.search("local", name, item_id=1, concept="ant")
    with pytest.raises(UserError, match="not found; indexes: cal-general"):
        service.search("local", "nope", item_id=1)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="bad.jpg: not an image"):
        service.search("local", name, image=str(tmp_path / "bad.jpg"))
    with pytest.raises(UserError, match="the name is taken"):
        service.build_index_now("local", "cal", name=name)
    # another model's embeddings, or another dimension, are refused
    opened = service.open_index("local", name)
    with pytest.raises(UserError, match="cannot be searched in it"):
        service.search_vectors(opened, opened.vectors[:1], "model:7")
    with pytest.raises(UserError, match="dimension 512, but this index holds 1280-d"):
        service.search_vectors(opened, np.ones((1, 512), np.float32), "general")
    with pytest.raises(UserError, match="model 'ghost': not found"):
        service.build_index_now("local", "cal", model="ghost")
    with pytest.raises(UserError, match=r"\(model:99\) no longer exists"):
        embed.load_embedder("model:99")
    assert main(["search", name, "--item", "999999"]) == 2
    assert "not in index" in capsys.readouterr().err


def test_sync_add_remove_survives_reload_and_empties(cal, tmp_path, capsys):
    name, ds = cal["name"], cal["dataset"]
    ant = [r["item_id"] for r in _by_concept(cal["records"], "ant")]
    ds_store.delete_items(ds["id"], ant[:2])
    assert service.index_facts("local", name)["stale"]
    assert service.sync_index("local", name) == {"index": name, "added": 0, "removed": 2, "count": 16,
                                                 "rebuilt": False}
    res = service.search("local", name, concept="ant", k=20)
    assert len(res) == 16 and not set(ant[:2]) & {r["item"] for r in res}

    more = caltech_slice(tmp_path / "more", classes=("airplanes",), per_class=3)
    import_dataset("local", more, "cal", workers=1)
    assert main(["index", "sync", name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["added"], out["removed"], out["count"]) == (3, 0, 19)
    assert not service.index_facts("local", name)["stale"]
    top = service.search("local", name, concept="airplanes", k=3)
    assert all(r["concepts"] == ["airplanes"] for r in top)

    # a fresh process (caches dropped) loads the same index from its files
    before = service.search("local", name, concept="anchor", k=5)
    loaded.clear()
    service._labels_cache.clear()
    assert service.search("local", name, concept="anchor", k=5) == before

    # every image deleted: an empty index answers with nothing
    all_ids = [r["item_id"] for r in ds_store.dataset_records(ds["id"])]
    ds_store.delete_items(ds["id"], all_ids)
    assert service.sync_index("local", name)["count"] == 0
    assert service.open_index("local", name).index.count == 0
    emb = np.ones((1, 1280), np.float32) / np.sqrt(1280)
    assert service.search_vectors(service.open_index("local", name), emb, "general")[1].shape == (1, 0)


def test_near_duplicates(small_folder, tmp_path, capsys):
    src = tmp_path / "dups"
    shutil.copytree(small_folder, src)
    photo = sorted((src / "anchor").iterdir())[0]
    with Image.open(photo) as im:  # the same photo re-encoded smaller: a near-duplicate, not a byte duplicate
        im.convert("RGB").resize((im.width * 9 // 10, im.height * 9 // 10)).save(src / "ant" / "copy.jpg", quality=70)
    import_dataset("local", src, "dups", workers=1)
    pairs = service.dataset_near_duplicates("local", "dups", threshold=0.9)  # no index yet: embedded in memory
    assert len(pairs) >= 1
    top = pairs[0]
    assert top["score"] >= 0.9 and {tuple(top["a_concepts"]), tuple(top["b_concepts"])} == {("anchor",), ("ant",)}
    service.build_index_now("local", "dups")
    with_index = service.near_duplicates("local", "dups-general", threshold=0.9)
    assert [(p["a"], p["b"]) for p in with_index] == [(p["a"], p["b"]) for p in pairs]
    with pytest.raises(UserError, match="threshold"):
        service.near_duplicates("local", "dups-general", threshold=1.5)
    assert main(["index", "duplicates", "dups-general", "--threshold", "0.9", "--json"]) == 0
    assert [(p["a"], p["b"]) for p in json.loads(capsys.readouterr().out)] == [(p["a"], p["b"]) for p in pairs]
    assert main(["index", "delete", "dups-general"]) == 0
    assert service.list_indexes("local") == []


def test_build_stops_and_resumes_from_its_checkpoint(small_folder, tmp_path, monkeypatch):
    import_dataset("local", small_folder, "cal", workers=1)
    monkeypatch.setattr(service, "CHECKPOINT_EVERY", 8)
    monkeypatch.setattr(embed, "BATCH_SIZE", 4)

    class StopEarly:
        def __init__(self):
            self.steps, self.lines, self.stop = [], [], True

        def on_start(self, info):
            self.info = info

        def on_step(self, p):
            self.steps.append(p)

        def on_epoch(self, epoch, metrics):
            self.metrics = metrics

        def should_stop(self):
            return self.stop and len(self.steps) >= 1

        def log(self, line):
            self.lines.append(line)

    cb = StopEarly()
    run = tmp_path / "run"
    res = service.build_index({"owner": "local", "dataset": "cal", "name": "resumed"}, run, cb)
    assert res["stopped"] and res["index_id"] is None and 0 < res["count"] < 18
    assert (run / service.PARTIAL_FILE).is_file()
    cb.stop = False
    res2 = service.build_index({"owner": "local", "dataset": "cal", "name": "resumed"}, run, cb, resume=True)
    assert not res2["stopped"] and res2["count"] == 18
    assert any(f"resumed: {res['count']} of 18" in line for line in cb.lines)
    assert cb.steps[-1]["done"] == 18 and cb.steps[-1]["phase"] == "embedding"
    assert not (run / service.PARTIAL_FILE).exists()
    # the resumed index equals one built in one go
    fresh = service.build_index_now("local", "cal", name="fresh")
    a, b = service.open_index("local", "resumed"), service.open_index("local", fresh["name"])
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)


@pytest.mark.slow
def test_index_job_runs_in_a_worker(small_folder, monkeypatch):
    from core import jobs
    from tests.jobs_support import cleanup

    monkeypatch.setenv("DEEPTRAIN_HEARTBEAT_S", "0.3")
    import_dataset("local", small_folder, "cal", workers=1)
    try:
        job_id = jobs.submit("local", "index", {"dataset": "cal", "model": "general", "name": "by-job"})
        st = jobs.wait("local", job_id, timeout=240)
        assert st["state"] == "succeeded", st.get("error")
    finally:
        cleanup()
    assert service.index_facts("local", "by-job")["count"] == 18
    assert isinstance(service.open_index("local", "by-job").index, vindex.FlatIndex)
