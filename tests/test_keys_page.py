"""The API keys page: a signed-in user creates a named key (shown once), sees it listed without the key, revokes it;
the keys service refuses bad names and scopes and keeps each user's keys their own."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import keys
from core.errors import UserError
from core.users import NotFound

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "7_API_Keys.py")


def test_create_list_and_revoke_on_the_page(signed_in):
    signed_in("vic", "viewer")  # a viewer may search and predict, so may have keys
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and any("No keys yet" in i.value for i in at.info)
    at.text_input(key="keys_name").input("notebook").run()
    at.multiselect(key="keys_scopes").set_value(["search"]).run()
    at.button(key="keys_create").click().run()
    assert not at.exception, at.exception
    shown = at.code[0].value
    caller = keys.authenticate(shown)
    assert caller is not None and caller.user.name == "vic" and caller.user.role == "viewer"
    assert caller.scopes == ("search",) and not caller.allows("predict")
    table = at.dataframe[0].value
    assert list(table["name"]) == ["notebook"] and list(table["limited to"]) == ["search"]
    assert shown not in table.to_string() and shown.startswith(table["key starts"][0].rstrip("."))

    at.run()  # shown once: the next run no longer shows it
    assert not at.code

    at.selectbox(key="keys_revoke_which").set_value("notebook").run()
    at.button(key="keys_revoke").click().run()
    assert not at.exception and keys.authenticate(shown) is None
    assert next(iter(at.dataframe[0].value["state"])).startswith("revoked")
    assert any("revoked" in s.value for s in at.success)


def test_keys_service_refuses_bad_input_and_keeps_keys_per_user():
    made = keys.create_key("alice", "ci", ["read", "read"])
    assert made["scopes"] == ["read"] and made["key"].startswith("dts_")
    with pytest.raises(UserError, match="key named 'ci' already"):
        keys.create_key("alice", "ci")
    assert keys.create_key("bob", "ci")["owner"] == "bob"  # names are per user
    with pytest.raises(UserError, match="Unknown scope 'admin'"):
        keys.create_key("alice", "other", ["admin"])
    for bad in ("", " ", "x" * 65, "<script>", None):
        with pytest.raises(UserError, match="Key name"):
            keys.create_key("alice", bad)
    with pytest.raises(NotFound):
        keys.revoke_key("bob", "nothing")
    keys.revoke_key("bob", "ci")
    assert keys.authenticate(made["key"]).user.name == "alice"  # bob's revoke touched only bob's key
    assert [k["name"] for k in keys.list_keys("alice")] == ["ci"] and "key" not in keys.list_keys("alice")[0]
    keys.revoke_key("alice", "ci")
    assert keys.create_key("alice", "ci")["active"]  # a revoked name may be used again
    for bad in (None, 42, "", "dts_short", made["key"] + "x", "Bearer " + made["key"]):
        assert keys.authenticate(bad) is None
