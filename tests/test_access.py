"""Who owns what, enforced in core: every service that names a stored thing takes the acting user first; another
user's private thing answers exactly like a missing one; a team thing can be read, not changed, by a non-owner.

The convention the walk below keeps: a public function of a module under ``core`` (outside ``core.store``, the data
layer that only services call) with a parameter in STORED_PARAMS names a stored thing by id or name, and so is a
service: its first parameter is the acting ``user``. Functions that take such a name for something else (a network
object called ``model``) are listed in NOT_SERVICES with the reason. A new service that forgets the user, or that
this file has no call for, fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import core
from core.errors import UserError
from core.users import NotAllowed, NotFound
from tests.conftest import caltech_slice

STORED_PARAMS = {"dataset", "dataset_id", "item_id", "item_ids", "job_id", "model", "model_id", "index", "index_id",
                 "name_or_id"}
NOT_SERVICES = {
    "core.models.weights.load_timm_pretrained": "model is a network object",
    "core.search.embed.embed_images": "model is a loaded embedder",
    "core.search.embed.embed_paths": "model is a loaded embedder",
    "core.search.service.query_vector": "works on an OpenIndex, which only open_index(user, ...) hands out",
    "core.search.service.duplicate_pairs": "index is an in-memory vector index",
    "core.training.data.image_cache": "dataset is a row the training process was given",
    "core.ui.prefill_train": "fills widgets; dataset is the name to preselect",
}
NOT_SERVICE_MODULES = {
    "core.cli": "command handlers take argparse namespaces and call the services with --user",
    "core.jobs.local": "the process backend: run by the queue, never by a user",
    "core.jobs.worker": "the worker process of one queued job",
}
MISSING = 999_999


def service_functions() -> dict[str, Callable]:
    """Every public function in core (outside core.store) with a parameter that names a stored thing."""
    found = {}
    for info in pkgutil.walk_packages(core.__path__, "core."):
        if info.name.startswith("core.store") or info.name in NOT_SERVICE_MODULES or info.name == "core.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, fn in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
                continue
            if STORED_PARAMS & set(inspect.signature(fn).parameters):
                found[f"{info.name}.{name}"] = fn
    return found


def test_every_service_takes_the_acting_user_first():
    found = service_functions()
    assert set(NOT_SERVICES) <= set(found), sorted(set(NOT_SERVICES) - set(found))  # no stale exemptions
    wrong = [name for name, fn in found.items()
             if name not in NOT_SERVICES and next(iter(inspect.signature(fn).parameters)) != "user"]
    assert not wrong, f"services whose first parameter is not the acting user: {wrong}"


# ------------------------------------------------------------------------------------------------ a world of alice's


@dataclass
class World:
    home: Path
    refs: dict[str, int]  # dataset, item, model, job, index -> alice's ids
    image: str  # a photo file for predict and search by image
    tmp: Path


@pytest.fixture(scope="module")
def world_home(tmp_path_factory):
    """Alice's dataset (3 concepts x 6 photos), a classifier trained on it, an index of it and a finished job."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("access")
    mp.setenv("DEEPTRAIN_HOME", str(home))
    try:
        from core.data.importer import import_dataset
        from core.search import service as search
        from core.store import datasets as ds_store
        from core.store import jobs as job_store
        from core.training import train

        src = caltech_slice(tmp_path_factory.mktemp("src"), per_class=6)
        report = import_dataset("alice", src, "photos", workers=1)
        res = train({"owner": "alice", "dataset": "photos", "kind": "classifier",
                     "template": "Studio_EfficientNetLite0_Transfer", "name": "clf", "seed": 0,
                     "params": {"pretrained_weights": "None", "image_size": 64, "num_epochs": 1, "batch_size": 8}},
                    home / "run-clf")
        index = search.build_index_now("alice", "photos", "general", "photos-ix")
        job = job_store.insert_job("alice", "train", {"dataset": "photos", "kind": "classifier",
                                                      "template": "Studio_EfficientNetLite0_Transfer", "params": {}})
        assert job_store.finish(job, "failed", error="stopped by the test", traceback="Traceback: /srv/secret.py",
                                from_states=("queued",))
        item = ds_store.find_items(report["dataset_id"], limit=1)[0]
        refs = {"dataset": report["dataset_id"], "item": item["item_id"], "model": res.model_id, "job": job,
                "index": index["index_id"]}
        yield home, refs, item["path"]
    finally:
        mp.undo()


@pytest.fixture
def world(world_home, monkeypatch, tmp_path) -> World:
    home, refs, image = world_home
    monkeypatch.setenv("DEEPTRAIN_HOME", str(home))
    return World(home, refs, image, tmp_path)


def share_all(visibility: str) -> None:
    from core.store import datasets, indexes, jobs, models

    datasets.set_visibility(datasets.find_dataset("alice", "photos")["id"], visibility)
    for m in models.list_models(None):
        models.set_visibility(m["id"], visibility)
    for ix in indexes.list_indexes(None):
        indexes.set_visibility(ix["id"], visibility)
    for j in jobs.list_jobs(None):
        jobs.set_visibility(j["id"], visibility)


def snapshot() -> dict:
    """What alice has: a change refused must leave it exactly so."""
    from core.store import datasets, indexes, jobs, models

    ds = datasets.find_dataset("alice", "photos")
    records = datasets.dataset_records(ds["id"]) if ds else []
    return {"dataset": ds and (ds["version"], ds["visibility"]),
            "items": [(r["item_id"], tuple(r["labels"]), r["split"]) for r in records],
            "models": [(m["id"], m["visibility"]) for m in models.list_models("alice") if m["owner"] == "alice"],
            "indexes": [(i["id"], i["visibility"], i["count"]) for i in indexes.list_indexes(None)
                        if i["owner"] == "alice"],
            "jobs": [(j["id"], j["state"], j["visibility"]) for j in jobs.list_jobs("alice")]}


# Each service: (the kind of thing it is given first, "read" or "change", a call as USER with that thing's REF).
def _m(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)



def _past_the_access_check(call, refusal: str):
    """Call a service whose visible-model answer in this world is a refusal of another kind (the world's model is a
    classifier; drawing boxes wants a detector): that refusal, reached only after the access check, counts as an
    answer; a hidden model's NotFound still comes first."""
    try:
        return call()
    except UserError as exc:
        if refusal not in str(exc):
            raise
        return None

CALLS: dict[str, tuple[str, str, Callable[[str, Any, World], Any]]] = {
    "core.data.service.get_dataset": ("dataset", "read", lambda u, r, w: _m("core.data.service.get_dataset")(u, r)),
    "core.data.service.dataset_concepts": ("dataset", "read",
                                           lambda u, r, w: _m("core.data.service.dataset_concepts")(u, r)),
    "core.data.service.concept_counts": ("dataset", "read",
                                         lambda u, r, w: _m("core.data.service.concept_counts")(u, r, "train")),
    "core.data.service.dataset_records": ("dataset", "read",
                                          lambda u, r, w: _m("core.data.service.dataset_records")(u, r)),
    "core.data.service.count_items": ("dataset", "read", lambda u, r, w: _m("core.data.service.count_items")(u, r)),
    "core.data.service.find_items": ("dataset", "read", lambda u, r, w: _m("core.data.service.find_items")(u, r)),
    "core.data.service.latest_report": ("dataset", "read",
                                        lambda u, r, w: _m("core.data.service.latest_report")(u, r)),
    "core.data.service.item_visible": ("item", "visible",
                                       lambda u, r, w: _m("core.data.service.item_visible")(u, r)),
    "core.data.service.get_item": ("item", "read", lambda u, r, w: _m("core.data.service.get_item")(u, r)),
    "core.data.service.thumbnail_path": ("item", "read",
                                         lambda u, r, w: _m("core.data.service.thumbnail_path")(u, r)),
    "core.data.service.set_item_labels": ("item", "change",
                                          lambda u, r, w: _m("core.data.service.set_item_labels")(u, r, ["x"])),
    "core.data.service.rename_concept": ("dataset", "change",
                                         lambda u, r, w: _m("core.data.service.rename_concept")(u, r, "ant", "x")),
    "core.data.service.delete_items": ("dataset", "change", lambda u, r, w: _m("core.data.service.delete_items")(
        u, r, [w.refs["item"]])),
    "core.data.service.delete_dataset": ("dataset", "change",
                                         lambda u, r, w: _m("core.data.service.delete_dataset")(u, r)),
    "core.data.service.share_dataset": ("dataset", "change",
                                        lambda u, r, w: _m("core.data.service.share_dataset")(u, r, "private")),
    "core.data.service.relabel_items": ("dataset", "change", lambda u, r, w: _m("core.data.service.relabel_items")(
        u, r, {w.refs["item"]: ["x"]})),
    "core.data.quality.find_issues_now": ("dataset", "read",
                                          lambda u, r, w: _m("core.data.quality.find_issues_now")(u, r)),
    "core.data.quality.dataset_issues": ("dataset", "read",
                                         lambda u, r, w: _m("core.data.quality.dataset_issues")(u, r)),
    "core.data.quality.quality_job_config": ("dataset", "read",
                                             lambda u, r, w: _m("core.data.quality.quality_job_config")(u, r)),
    "core.data.quality.checked_items": ("dataset", "read",
                                        lambda u, r, w: _m("core.data.quality.checked_items")(u, r)),
    "core.data.quality.item_neighbours": ("dataset", "read", lambda u, r, w: _m("core.data.quality.item_neighbours")(
        u, r, w.refs["item"])),
    "core.data.quality.mark_checked": ("dataset", "change", lambda u, r, w: _m("core.data.quality.mark_checked")(
        u, r, [w.refs["item"]])),
    "core.data.quality.accept_suggestions": ("dataset", "change", lambda u, r, w: _m(
        "core.data.quality.accept_suggestions")(u, r, [w.refs["item"]])),
    "core.data.quality.last_training_config": ("dataset", "read", lambda u, r, w: _m(
        "core.data.quality.last_training_config")(u, r)),
    "core.data.quality.retrain": ("dataset", "change", lambda u, r, w: _m("core.data.quality.retrain")(u, r)),
    "core.data.atlas.dataset_map": ("dataset", "read", lambda u, r, w: _m("core.data.atlas.dataset_map")(u, r)),
    "core.data.atlas.map_job_config": ("dataset", "read",
                                       lambda u, r, w: _m("core.data.atlas.map_job_config")(u, r)),
    "core.data.labelling.suggest_labels": ("dataset", "read", lambda u, r, w: _m("core.data.labelling.suggest_labels")(
        u, r, w.refs["model"])),
    "core.data.labelling.label_first": ("dataset", "read", lambda u, r, w: _m("core.data.labelling.label_first")(u, r)),
    "core.data.labelling.accept_suggested": ("dataset", "change", lambda u, r, w: _m(
        "core.data.labelling.accept_suggested")(u, r, [{"item": w.refs["item"], "suggested": ["x"], "confidence": 1}],
                                                0.5)),
    "core.data.export.export_dataset": ("dataset", "read", lambda u, r, w: _m("core.data.export.export_dataset")(
        u, r, "csv", w.tmp / "out.zip")),
    "core.data.importer.resplit": ("dataset", "change", lambda u, r, w: _m("core.data.importer.resplit")(u, r, 0.5)),
    "core.evaluation.export.export_model": ("model", "read", lambda u, r, w: _m("core.evaluation.export.export_model")(
        u, r, "zip", w.tmp / "m.zip")),
    "core.evaluation.predict.predict": ("model", "read",
                                        lambda u, r, w: _m("core.evaluation.predict.predict")(u, r, [w.image])),
    "core.evaluation.predict.draw_predictions": ("model", "read", lambda u, r, w: _past_the_access_check(
        lambda: _m("core.evaluation.predict.draw_predictions")(u, r, [w.image], [{"boxes": []}], w.tmp / "drawn"),
        "not a detector")),
    "core.evaluation.report.build_report": ("model", "read",
                                            lambda u, r, w: _m("core.evaluation.report.build_report")(u, r)),
    "core.evaluation.service.get": ("model", "read", lambda u, r, w: _m("core.evaluation.service.get")(u, r)),
    "core.evaluation.service.train_time": ("model", "read",
                                           lambda u, r, w: _m("core.evaluation.service.train_time")(u, r)),
    "core.evaluation.service.head_tuning": ("model", "read",
                                            lambda u, r, w: _m("core.evaluation.service.head_tuning")(u, r)),
    "core.evaluation.service.evaluate": ("model", "read",
                                         lambda u, r, w: _m("core.evaluation.service.evaluate")(u, r)),
    "core.evaluation.service.delete_model": ("model", "change",
                                             lambda u, r, w: _m("core.evaluation.service.delete_model")(u, r)),
    "core.evaluation.service.share_model": ("model", "change", lambda u, r, w: _m(
        "core.evaluation.service.share_model")(u, r, "private")),
    "core.jobs.status": ("job", "read", lambda u, r, w: _m("core.jobs.status")(u, r)),
    "core.jobs.progress": ("job", "read", lambda u, r, w: _m("core.jobs.progress")(u, r)),
    "core.jobs.metrics": ("job", "read", lambda u, r, w: _m("core.jobs.metrics")(u, r)),
    "core.jobs.logs": ("job", "read", lambda u, r, w: _m("core.jobs.logs")(u, r)),
    "core.jobs.wait": ("job", "read", lambda u, r, w: _m("core.jobs.wait")(u, r, timeout=5)),
    "core.jobs.cancel": ("job", "change", lambda u, r, w: _m("core.jobs.cancel")(u, r)),
    "core.jobs.resume": ("job", "change", lambda u, r, w: _m("core.jobs.resume")(u, r)),
    "core.jobs.extend": ("job", "change", lambda u, r, w: _m("core.jobs.extend")(u, r, 1)),
    "core.jobs.share_job": ("job", "change", lambda u, r, w: _m("core.jobs.share_job")(u, r, "private")),
    "core.search.embed.resolve_model": ("model", "read", lambda u, r, w: _m("core.search.embed.resolve_model")(u, r)),
    "core.search.service.build_index_now": ("dataset", "read", lambda u, r, w: _m(
        "core.search.service.build_index_now")(u, r, "general", f"bob-{w.tmp.name}"[:90])),
    "core.search.service.dataset_near_duplicates": ("dataset", "read", lambda u, r, w: _m(
        "core.search.service.dataset_near_duplicates")(u, r)),
    "core.search.service.list_indexes": ("dataset", "read",
                                         lambda u, r, w: _m("core.search.service.list_indexes")(u, r)),
    "core.search.service.open_index": ("index", "read", lambda u, r, w: _m("core.search.service.open_index")(u, r)),
    "core.search.service.embed": ("model", "read", lambda u, r, w: _m("core.search.service.embed")(u, r, [w.image])),
    "core.search.service.search": ("index", "read",
                                   lambda u, r, w: _m("core.search.service.search")(u, r, concept="ant")),
    "core.search.service.nearest_concepts": ("index", "read", lambda u, r, w: _m(
        "core.search.service.nearest_concepts")(u, r, image=w.image)),
    "core.search.service.near_duplicates": ("index", "read",
                                            lambda u, r, w: _m("core.search.service.near_duplicates")(u, r)),
    "core.search.service.index_facts": ("index", "read", lambda u, r, w: _m("core.search.service.index_facts")(u, r)),
    "core.search.service.index_item": ("index", "read", lambda u, r, w: _m("core.search.service.index_item")(
        u, r, w.refs["item"])),
    "core.search.service.index_concepts": ("index", "read",
                                           lambda u, r, w: _m("core.search.service.index_concepts")(u, r)),
    "core.search.service.index_first_item": ("index", "read",
                                             lambda u, r, w: _m("core.search.service.index_first_item")(u, r)),
    "core.search.service.sync_index": ("index", "change", lambda u, r, w: _m("core.search.service.sync_index")(u, r)),
    "core.search.service.delete_index": ("index", "change",
                                         lambda u, r, w: _m("core.search.service.delete_index")(u, r)),
    "core.search.service.share_index": ("index", "change", lambda u, r, w: _m("core.search.service.share_index")(
        u, r, "private")),
    "core.search.bundle.export_bundle": ("index", "read", lambda u, r, w: _m("core.search.bundle.export_bundle")(
        u, r, w.tmp / "bundle.zip")),
}


def test_every_service_has_a_call_here():
    services = {n for n in service_functions() if n not in NOT_SERVICES}
    assert services == set(CALLS), {"untested": sorted(services - set(CALLS)), "gone": sorted(set(CALLS) - services)}


def _outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        result = call()
    except NotFound as exc:
        return "NotFound", str(exc)
    except NotAllowed as exc:
        return "NotAllowed", str(exc)
    return "ok", repr(result)[:200]


@pytest.mark.parametrize("service", sorted(CALLS))
def test_others_private_things_are_missing_and_team_things_read_only(world, service):
    kind, mode, call = CALLS[service]
    ref = world.refs[kind]
    before = snapshot()
    try:
        share_all("private")
        hidden = _outcome(lambda: call("bob", ref, world))
        missing = _outcome(lambda: call("bob", MISSING, world))
        if mode == "visible":  # a yes/no question: the same "no" for hidden and missing
            assert hidden == missing == ("ok", "False")
        else:
            assert hidden[0] == missing[0] == "NotFound", (hidden, missing)
            # the id as a whole number only: a name listed in the message may hold its digits ("bob-test_...51")
            assert re.sub(rf"\b{ref}\b", "<ref>", hidden[1]) == re.sub(rf"\b{MISSING}\b", "<ref>", missing[1])
        assert snapshot() == before

        share_all("team")
        shared = _outcome(lambda: call("bob", ref, world))
        if mode == "change":
            assert shared[0] == "NotAllowed" and "only its owner" in shared[1], shared
        else:
            assert shared[0] == "ok", shared
        share_all("private")
        assert snapshot() == before
    finally:
        share_all("private")


def test_the_owner_and_an_admin_may_change(world):
    """The same checks let the owner act, and an admin act on anyone's thing."""
    from core.data import service
    from core.users import User

    assert service.share_dataset("alice", "photos", "private")["visibility"] == "private"
    assert service.get_dataset(User("root", "admin"), world.refs["dataset"])["owner"] == "alice"
    assert service.rename_concept(User("root", "admin"), world.refs["dataset"], "ant", "ant") >= 1


def test_cli_acts_as_user_and_never_shows_others_private_datasets(world, capsys):
    """``python -m core --user bob dataset list --json`` lists no private dataset of alice's, and ``dataset show``
    of alice's answers exactly as for a name that does not exist; once shared, bob sees it as alice/photos."""
    import json
    import os
    import subprocess
    import sys

    from core.cli import main

    share_all("private")
    env = {**os.environ, "DEEPTRAIN_HOME": str(world.home)}
    run = [sys.executable, "-m", "core", "--user", "bob", "dataset"]
    listed = subprocess.run([*run, "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert main(["--user", "alice", "dataset", "list", "--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == ["photos"]

    hidden = subprocess.run([*run, "show", "photos"], capture_output=True, text=True, env=env, timeout=120)
    missing = subprocess.run([*run, "show", "nothing"], capture_output=True, text=True, env=env, timeout=120)
    assert hidden.returncode == missing.returncode == 2
    assert hidden.stderr.replace("'photos'", "'X'") == missing.stderr.replace("'nothing'", "'X'")
    assert "alice" not in hidden.stderr

    assert main(["--user", "alice", "share", "dataset", "photos"]) == 0
    assert capsys.readouterr().out == "dataset photos is now team\n"
    try:
        assert main(["--user", "bob", "dataset", "list", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(d["owner"], d["name"], d["visibility"]) for d in rows] == [("alice", "photos", "team")]
        assert main(["--user", "bob", "dataset", "delete", "alice/photos"]) == 2
        assert "only its owner can change it" in capsys.readouterr().err
    finally:
        share_all("private")
    assert main(["--user", "bad name!", "dataset", "list"]) == 2
    assert "User name 'bad name!' is not allowed" in capsys.readouterr().err


def test_a_team_jobs_traceback_is_its_owners(world):
    """A failed job's traceback (server paths) is shown to its owner, not to the team it is shared with."""
    from core import jobs

    share_all("team")
    try:
        assert "secret.py" in jobs.status("alice", world.refs["job"])["traceback"]
        seen = jobs.status("bob", world.refs["job"])
        assert seen["traceback"] is None and seen["error"] == "stopped by the test"
        assert [j["id"] for j in jobs.list_jobs("bob")] == []  # bob's own jobs
        assert world.refs["job"] in [j["id"] for j in jobs.list_jobs("bob", team=True)]
    finally:
        share_all("private")


def test_visual_search_page_shows_nothing_of_another_users_item(world, signed_in):
    """An item id typed on the Visual Search page: bob, with an index of his own, gets the not-found message for
    alice's private item, exactly as for an id that does not exist, and no image of it."""
    from streamlit.testing.v1 import AppTest

    from core.data.importer import import_dataset
    from core.search import service

    share_all("private")
    import_dataset("bob", caltech_slice(world.tmp / "bob", classes=("anchor", "ant"), per_class=3), "bobs", workers=1)
    service.build_index_now("bob", "bobs", "general", "bobs-ix")
    page = str(Path(__file__).resolve().parent.parent / "pages" / "5_Visual_Search.py")
    signed_in("bob")
    at = AppTest.from_file(page, default_timeout=120).run()
    assert not at.exception and at.selectbox(key="vs_index").value == "bobs-ix"
    assert not [o for o in at.selectbox(key="vs_index").options if "photos-ix" in o]  # alice's is not offered
    at.radio(key="vs_mode").set_value("Dataset image").run()
    own = service.index_first_item("bob", "bobs-ix")
    at.number_input(key="vs_item").set_value(own).run()
    assert not at.exception and not at.error
    with_own_image = len(at.get("image"))
    assert with_own_image >= 1
    errors = {}
    for ref in (world.refs["item"], MISSING):
        at.number_input(key="vs_item").set_value(ref).run()
        assert not at.exception
        errors[ref] = [e.value for e in at.error]
        assert len(at.get("image")) < with_own_image  # the query image is not shown, nor any result
    assert errors[world.refs["item"]] == [f"Unknown item id {world.refs['item']}"]
    assert errors[MISSING] == [f"Unknown item id {MISSING}"]


def test_pages_and_the_command_line_reach_stored_data_only_through_services():
    """An access check in a service cannot be walked around: pages, the home page, the UI helpers and the command
    line import nothing from core.store."""
    import ast

    root = Path(core.__file__).resolve().parent.parent
    files = [*sorted((root / "pages").glob("*.py")), root / "streamlit_app.py", root / "core" / "cli.py",
             root / "core" / "ui.py"]
    offenders = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{f.name}: {n}" for n in names if n.startswith("core.store")]
    assert not offenders, offenders


def test_datasets_page_shares_and_shows_others_team_datasets_read_only(world, signed_in):
    """Alice shares her dataset with the page's switch; bob then finds it as alice/photos, read-only: the switch
    is replaced by a note naming the owner and the editing controls are disabled."""
    from streamlit.testing.v1 import AppTest

    from core.store import datasets as ds_store

    page = str(Path(__file__).resolve().parent.parent / "pages" / "1_Datasets.py")
    share_all("private")
    try:
        signed_in("alice")
        at = AppTest.from_file(page, default_timeout=120).run()
        assert not at.exception and at.selectbox(key="ds_selected").value == "photos"
        at.toggle(key="ds_share").set_value(True).run()
        assert not at.exception
        assert ds_store.find_dataset("alice", "photos")["visibility"] == "team"

        signed_in("bob")
        at = AppTest.from_file(page, default_timeout=120).run()
        assert not at.exception and at.selectbox(key="ds_selected").value == "alice/photos"
        assert not [t for t in at.toggle if t.key == "ds_share"]
        assert any("Shared by alice" in c.value for c in at.caption)
        assert at.button(key="ds_save_labels").disabled and at.button(key="ds_delete_dataset").disabled
        assert at.button(key="ds_rename_btn").disabled and at.button(key="ds_resplit_btn").disabled
    finally:
        share_all("private")
