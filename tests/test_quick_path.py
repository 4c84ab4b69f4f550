"""The API's quick path (``quick=True``): what its event loop may do itself, a lookup in what is already loaded and
one indexed read, and everything else (loading, embedding, writing) refused with ``NotQuick`` so that it runs on a
thread; on a real Caltech-101 slice indexed with the general embedder."""

from __future__ import annotations

import numpy as np
import pytest

from core import keys, loaded
from core.data.importer import import_dataset
from core.errors import NotQuick
from core.search import service


@pytest.fixture
def cal(small_folder) -> list[dict]:
    import_dataset("local", small_folder, "cal", workers=1)
    service.build_index_now("local", "cal")
    loaded.clear()
    yield _records()
    loaded.clear()


def _records() -> list[dict]:
    from core.store import datasets as ds_store

    return ds_store.dataset_records(ds_store.get_dataset("local", "cal")["id"])


def test_loaded_gives_what_it_holds_and_never_loads_when_quick():
    loaded.clear()
    with pytest.raises(NotQuick):
        loaded.get(("t", "q"), ("v1",), lambda: pytest.fail("a quick call loaded"), len, quick=True)
    held = loaded.get(("t", "q"), ("v1",), lambda: [1, 2], len)
    assert loaded.get(("t", "q"), ("v1",), lambda: pytest.fail("cached"), len, quick=True) is held
    with pytest.raises(NotQuick):  # its files changed: the new copy is loaded on a thread
        loaded.get(("t", "q"), ("v2",), lambda: pytest.fail("a quick call loaded"), len, quick=True)
    loaded.clear()


def test_quick_search_answers_from_the_loaded_index_and_refuses_the_rest(cal):
    item = cal[0]["item_id"]
    loaded.clear()
    with pytest.raises(NotQuick):  # not loaded in this process yet
        service.search("local", "cal-general", item_id=item, k=5, quick=True)
    slow = service.search("local", "cal-general", item_id=item, k=5)
    assert service.search("local", "cal-general", item_id=item, k=5, quick=True) == slow
    vector = service.open_index("local", "cal-general").vectors[0].tolist()
    assert (service.search("local", "cal-general", vector=vector, k=5, quick=True)
            == service.search("local", "cal-general", vector=vector, k=5))
    for query in ({"image": cal[0]["path"]}, {"concept": "ant"}, {"item_id": item, "concept_filter": "ant"}):
        with pytest.raises(NotQuick):
            service.search("local", "cal-general", k=5, quick=True, **query)
    assert service.search("local", "cal-general", k=5, concept="ant")[0]["concepts"] == ["ant"]


def test_quick_key_check_reads_once_and_leaves_writes_to_a_thread(deeptrain_home):
    key = keys.create_key("local", "quick")["key"]
    keys._touched.clear()
    keys._roles.clear()
    with pytest.raises(NotQuick):  # its "last used" is due to be written and its owner's role read
        keys.authenticate(key, quick=True)
    caller = keys.authenticate(key)
    assert keys.authenticate(key, quick=True) == caller
    assert keys.authenticate("dts_" + "x" * 43, quick=True) is None
    keys.revoke_key("local", "quick")
    assert keys.authenticate(key, quick=True) is None  # revoking is immediate on the quick path too
    assert np.isfinite(keys.list_keys("local")[0]["last_used_at"])
