"""Sign-in and roles on a team server: identity (proxy header, single-user mode), roles from the settings and the
Users page, roles refused in core (not only hidden in pages), navigation by role, a fair queue, per-user limits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import UserError
from core.users import NotAllowed, User
from tests.conftest import ROOT

PAGES = ROOT / "pages"


def _texts(at) -> str:
    return "\n".join([t.value for t in at.text] + [c.value for c in at.caption] + [e.value for e in at.error]
                     + [i.value for i in at.info] + [m.value for m in at.markdown] + [w.value for w in at.warning])


# ------------------------------------------------------------------------------------------------ identity


def test_single_user_mode_is_the_local_admin():
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert "Single-user mode: local" in _texts(at)
    assert "reachable from other machines" not in _texts(at)  # .streamlit/config.toml binds to 127.0.0.1
    from core import accounts

    assert accounts.identify("local", "single") == User("local", "admin")


def test_home_warns_when_reachable_without_sign_in(monkeypatch):
    import streamlit as st

    from core import ui

    real = st.get_option
    monkeypatch.setattr(st, "get_option", lambda key: "0.0.0.0" if key == "server.address" else real(key))
    assert ui.reachable_without_sign_in()
    monkeypatch.setenv("DEEPTRAIN_AUTH_HEADER", "X-Forwarded-Email")
    assert not ui.reachable_without_sign_in()


def test_proxy_header_signs_in_and_its_absence_shows_nothing(signed_in):
    signed_in(None)
    at = AppTest.from_file(str(PAGES / "1_Datasets.py"), default_timeout=60).run()
    assert not at.exception
    assert any("came without it" in e.value for e in at.error)
    assert not at.tabs and not at.text_input  # nothing of the studio shows

    signed_in("vic@example.org", role=None)  # the default role: viewer
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert "Signed in as vic@example.org (viewer)" in _texts(at)
    at.switch_page("pages/1_Datasets.py").run()
    assert not at.exception
    assert "Import" not in [t.label for t in at.tabs]
    assert not [r for r in at.radio if r.key == "ds_source_kind"]  # no import controls for a viewer


def test_a_viewer_gets_no_train_page_and_no_import_controls(signed_in):
    signed_in("vic@example.org", role="viewer")
    at = AppTest.from_file(str(PAGES / "2_Train.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Training needs the member role; you are a viewer" in i.value for i in at.info)
    assert not at.button  # no Start training
    signed_in("mia@example.org", role="member")
    at = AppTest.from_file(str(PAGES / "1_Datasets.py"), default_timeout=60).run()
    assert not at.exception and at.radio(key="ds_source_kind")


def test_navigation_by_role():
    from core import ui

    titles = lambda role: [t for _, t, _, _ in ui.pages_for(User("x", role))]  # noqa: E731
    assert titles("viewer") == ["Home", "Datasets", "Jobs", "Models", "Visual Search", "API keys"]
    assert titles("member") == ["Home", "Datasets", "Train", "Jobs", "Models", "Visual Search", "API keys"]
    assert titles("admin") == ["Home", "Datasets", "Train", "Jobs", "Models", "Visual Search", "API keys", "Users"]
    assert all((ROOT / f).is_file() for f, *_ in ui.PAGES)


def test_the_app_runs_its_pages_through_navigation():
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Training device" in s.value for s in at.subheader)  # the default page is Home


# ------------------------------------------------------------------------------------------------ roles


def test_roles_from_settings_command_line_and_the_users_page(monkeypatch, signed_in):
    from core import accounts

    monkeypatch.setenv("DEEPTRAIN_ADMINS", "root@example.org")
    assert accounts.identify("root@example.org", "oidc").role == "admin"
    assert accounts.identify("ann@example.org", "oidc").role == "viewer"  # default_role
    assert accounts.identify("carl", "cli").role == "member"  # first seen through --user
    monkeypatch.setenv("DEEPTRAIN_DEFAULT_ROLE", "member")
    assert accounts.identify("ann@example.org", "oidc").role == "member"

    with pytest.raises(NotAllowed, match="listing the users needs the admin role"):
        accounts.list_users(User("ann@example.org", "member"))
    signed_in("root@example.org", role=None)
    at = AppTest.from_file(str(PAGES / "6_Users.py"), default_timeout=60).run()
    assert not at.exception
    at.selectbox(key="users_who").set_value("ann@example.org")
    at.selectbox(key="users_role").set_value("viewer")
    at.button(key="users_save").click().run()
    assert not at.exception
    assert accounts.identify("ann@example.org", "oidc").role == "viewer"  # stored: overrides the default
    rows = {r["name"]: r for r in accounts.list_users(User("root@example.org", "admin"))}
    assert rows["ann@example.org"]["role_from"] == "stored" and rows["root@example.org"]["role"] == "admin"
    with pytest.raises(UserError, match="Role 'boss' is not allowed"):
        accounts.set_role(User("root@example.org", "admin"), "ann@example.org", "boss")

    signed_in("ann@example.org", role=None)
    at = AppTest.from_file(str(PAGES / "6_Users.py"), default_timeout=60).run()
    assert not at.exception and not at.dataframe
    assert any("needs the admin role" in i.value for i in at.info)


def test_a_viewer_is_refused_in_core_for_every_change(small_folder, tmp_path):
    """Roles are checked where the change happens: a viewer (here the owner of everything, demoted) calling any
    changing service gets the studio's permission error, and nothing changes."""
    from core import jobs
    from core.data import service as datasets
    from core.data.importer import import_dataset, resplit
    from core.evaluation import export
    from core.search import service as search

    import_dataset("vic", small_folder, "mine", workers=1)
    vic = User("vic", "viewer")
    calls = {
        "import": lambda: import_dataset(vic, small_folder, "more"),
        "labels": lambda: datasets.set_item_labels(vic, datasets.find_items("vic", "mine", limit=1)[0]["item_id"],
                                                   ["x"]),
        "rename": lambda: datasets.rename_concept(vic, "mine", "ant", "x"),
        "delete items": lambda: datasets.delete_items(vic, "mine", [1]),
        "delete": lambda: datasets.delete_dataset(vic, "mine"),
        "share": lambda: datasets.share_dataset(vic, "mine", "team"),
        "split": lambda: resplit(vic, "mine", 0.5),
        "train": lambda: jobs.submit(vic, "train", {"dataset": "mine", "kind": "classifier",
                                                    "template": "Studio_EfficientNetLite0_Transfer"}),
        "index": lambda: search.build_index_now(vic, "mine"),
        "model import": lambda: export.import_archive(vic, b"not a zip"),
    }
    before = datasets.get_dataset("vic", "mine")
    for call in calls.values():
        with pytest.raises(NotAllowed, match="vic is a viewer: .* needs the member role"):
            call()
    assert datasets.get_dataset("vic", "mine") == before and jobs.list_jobs("vic") == []
    assert datasets.find_items(vic, "mine")  # reading stays allowed


# ------------------------------------------------------------------------------------------------ fair queue


def test_queue_is_fair_across_owners():
    """User A queues 10 jobs (the first starts at once), then user B one: B's job is the second to start."""
    from core.store import jobs as store

    config = {"dataset": "d", "kind": "classifier", "template": "t", "params": {}}
    a_jobs = [store.insert_job("a", "train", config) for _ in range(10)]
    started = [store.claim_next(max_active=1, slots=1)["id"]]
    b_job = store.insert_job("b", "train", config)
    positions = store.queue_positions()
    assert positions[b_job] == 1 and positions[a_jobs[1]] == 2 and positions[a_jobs[9]] == 10
    while True:
        assert store.finish(started[-1], "succeeded")
        job = store.claim_next(max_active=1, slots=1)
        if job is None:
            break
        started.append(job["id"])
    assert started[:3] == [a_jobs[0], b_job, a_jobs[1]] and started[3:] == a_jobs[2:]


def test_queue_positions_show_on_the_jobs_page():
    from core.store import jobs as store

    config = {"dataset": "d", "kind": "classifier", "template": "t", "params": {}}
    first = store.insert_job("local", "train", config)
    store.claim_next(max_active=1, slots=1)
    second = store.insert_job("local", "train", config)
    store.set_launched(first, 2**22 + 12345, "elsewhere")  # another host: the heartbeat decides, and it is fresh
    store.beat(first)
    at = AppTest.from_file(str(PAGES / "3_Jobs.py"), default_timeout=60)
    at.session_state["jobs_select_next"] = second
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table.loc[table["id"] == second, "state"].item() == "queued (#1 in line)"
    store.cancel_queued(second)
    store.finish(first, "cancelled")


# ------------------------------------------------------------------------------------------------ limits


def test_queued_jobs_limit_is_refused_at_submit(monkeypatch):
    from core import jobs
    from core.store import jobs as store

    monkeypatch.setenv("DEEPTRAIN_MAX_QUEUED_JOBS", "2")
    config = {"dataset": "d", "kind": "classifier", "template": "t", "params": {}}
    store.insert_job("local", "train", config)
    store.insert_job("local", "train", config)
    store.insert_job("other", "train", config)  # another user's jobs do not count
    with pytest.raises(UserError, match=r"You have 2 jobs queued or running, the most one user may have "
                                        r"\(max_queued_jobs = 2\)"):
        jobs.submit("local", "train", config)
    for job in store.list_jobs(states=("queued",)):
        store.cancel_queued(job["id"])


def test_storage_limit_is_refused_before_anything_is_stored(small_folder, monkeypatch):
    from core import accounts
    from core.data import service as datasets
    from core.data.importer import import_dataset

    monkeypatch.setenv("DEEPTRAIN_MAX_STORAGE_BYTES", "20000")
    with pytest.raises(UserError, match=r"src: importing it would bring your images to .* KB, past the 19.5 KB one "
                                        r"user may store \(max_storage_bytes; you hold 0 B now\)"):
        import_dataset("local", small_folder, "big", workers=1)
    assert datasets.list_datasets("local") == []
    monkeypatch.setenv("DEEPTRAIN_MAX_STORAGE_BYTES", str(10**9))
    import_dataset("local", small_folder, "big", workers=1)
    used = accounts.storage_used("local")
    assert used > 20000
    import_dataset("local", small_folder, "again", workers=1)  # the same images cost nothing more
    assert accounts.storage_used("local") == used
    monkeypatch.setenv("DEEPTRAIN_MAX_STORAGE_BYTES", str(used))
    with pytest.raises(UserError, match="the most one user may store"):
        import_dataset("local", small_folder, "third", workers=1)


def test_upload_limit_is_refused_before_anything_is_written(monkeypatch, deeptrain_home):
    from core import ui

    monkeypatch.setenv("DEEPTRAIN_MAX_UPLOAD_BYTES", "1000")
    upload = io.BytesIO(b"x" * 2000)
    upload.name, upload.size = "photos.zip", 2000
    with pytest.raises(UserError, match=r"photos.zip: 2.0 KB is more than one upload may be on this server "
                                        r"\(1000 B, max_upload_bytes\)"):
        ui.save_upload(upload, "up")
    assert not list((deeptrain_home / "uploads").glob("*")) if (deeptrain_home / "uploads").exists() else True
    small = io.BytesIO(b"x" * 10)
    small.name, small.size = "ok.zip", 10
    saved = ui.save_upload(small, "up")
    assert Path(saved).read_bytes() == b"x" * 10
