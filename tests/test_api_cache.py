"""The one cache of loaded networks and indexes (core.loaded): least recently used dropped under the memory budget,
reloaded when a model's or index's files change, loaded once however many threads ask, on the inference device, and
the same object for the API, the pages' services and the search embedder."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from core import loaded


@pytest.fixture(autouse=True)
def empty_cache():
    loaded.clear()
    yield
    loaded.clear()


def test_least_recently_used_dropped_under_the_budget(monkeypatch):
    monkeypatch.setenv("DEEPTRAIN_LOADED_MAX_BYTES", str(3000))
    arrays = {name: np.zeros(1000, np.uint8) for name in "abcd"}
    calls: list[str] = []

    def get(name: str) -> np.ndarray:
        def load() -> np.ndarray:
            calls.append(name)
            return arrays[name]
        return loaded.get(("t", name), (), load, lambda a: a.nbytes)

    for name in "abc":
        assert get(name) is arrays[name]
    get("a")  # a is now the most recently used: b is the least
    get("d")
    assert [e["slot"] for e in loaded.stats()["entries"]] == [repr(("t", s)) for s in "cad"]
    assert loaded.stats()["bytes"] == 3000 and loaded.stats()["evictions"] == 1
    get("b")  # dropped: loaded again
    assert calls == ["a", "b", "c", "d", "b"]

    monkeypatch.setenv("DEEPTRAIN_LOADED_MAX_BYTES", "10")  # one entry over the whole budget still serves
    big = loaded.get(("t", "big"), (), lambda: np.zeros(5000, np.uint8), lambda a: a.nbytes)
    assert big.nbytes == 5000 and [e["slot"] for e in loaded.stats()["entries"]] == [repr(("t", "big"))]


def test_a_new_stamp_reloads_and_drops_the_old_copy():
    first = loaded.get(("t", "m"), ("v1",), lambda: np.ones(10), lambda a: a.nbytes)
    assert loaded.get(("t", "m"), ("v1",), lambda: pytest.fail("cached"), lambda a: a.nbytes) is first
    second = loaded.get(("t", "m"), ("v2",), lambda: np.ones(10) * 2, lambda a: a.nbytes)
    assert second is not first and len(loaded.stats()["entries"]) == 1


def test_concurrent_first_calls_load_once():
    started = []

    def slow() -> list:
        started.append(1)
        time.sleep(0.3)
        return [1, 2, 3]

    results = []
    threads = [threading.Thread(target=lambda: results.append(loaded.get(("t", "slow"), (), slow, lambda v: 24)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_a_failed_load_caches_nothing():
    def broken():
        raise ValueError("corrupt")

    with pytest.raises(ValueError):
        loaded.get(("t", "x"), (), broken, lambda v: 1)
    assert loaded.get(("t", "x"), (), lambda: "fine", lambda v: 1) == "fine"


def test_a_stored_model_is_loaded_once_for_every_caller_and_again_when_retrained(tmp_path_factory, monkeypatch):
    from tests.model_support import make_trained_home

    home = make_trained_home(tmp_path_factory, "cache")
    monkeypatch.setenv("DEEPTRAIN_HOME", str(home))
    from core.device import inference_device
    from core.evaluation import service
    from core.evaluation.predict import predict
    from core.search import embed

    row = service.get("local", "classifier")
    net = service.load_model(row)
    assert net.device == inference_device() and next(net.net.parameters()).device.type == inference_device().type
    assert embed.load_embedder(f"model:{row['id']}") is net  # the search embedder is the same loaded network
    assert service.load_model(service.get("local", row["id"])) is net
    from core.store import datasets as ds_store

    photo = ds_store.dataset_records(row["dataset_id"])[0]["path"]
    before = predict("local", "classifier", [photo])
    assert service.load_model(row) is net  # predicting used the cached one

    weights = service.weights_file(row)
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # as a re-import rewrites it
    again = service.load_model(row)
    assert again is not net and predict("local", "classifier", [photo]) == before
    assert loaded.stats()["loads"] >= 2 and loaded.stats()["bytes"] > 0


def test_an_index_is_opened_once_and_again_after_a_sync(tmp_path, small_folder):
    from core.data.importer import import_dataset
    from core.search import service
    from tests.conftest import caltech_slice

    import_dataset("local", small_folder, "cal", workers=1)
    service.build_index_now("local", "cal", "general", "ix")
    first = service.open_index("local", "ix")
    assert service.open_index("local", "ix") is first
    service.share_index("local", "ix", "team")  # a changed row: a copy with the new row; the cached one untouched
    shared = service.open_index("local", "ix")
    assert shared.row["visibility"] == "team" and first.row["visibility"] == "private"
    assert shared.vectors is first.vectors
    import_dataset("local", caltech_slice(tmp_path / "more", classes=("airplanes",), per_class=2), "cal", workers=1)
    service.sync_index("local", "ix")
    synced = service.open_index("local", "ix")
    assert synced is not first and synced.index.count == first.index.count + 2
    service.delete_index("local", "ix")
    assert not [e for e in loaded.stats()["entries"] if "index" in e["slot"]]
