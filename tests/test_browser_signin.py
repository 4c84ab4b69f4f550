"""Browser journey: OpenID Connect sign-in (st.login) against a local provider started by the test
(oidc-provider-mock), two users in two browser contexts, roles, and sign out."""

from __future__ import annotations

import re
import secrets

import pytest
from playwright.sync_api import expect

from tests.browser import VIEWPORT, chromium, free_port, new_page, streamlit_server, wait_idle
from tests.conftest import caltech_slice

pytestmark = pytest.mark.browser


def sign_in(page, url: str, subject: str) -> None:
    """From the sign-in screen, through the provider's authorize form (one click on a predefined user), back to
    the studio's home page."""
    page.goto(url)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("button", name=subject, exact=True).click()  # the provider's predefined user
    page.get_by_text("At a glance").wait_for()
    wait_idle(page)


def dataset_choices(page) -> list[str]:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Datasets", exact=True).click()
    page.get_by_text("Browse", exact=True).first.wait_for()
    wait_idle(page)
    box = page.get_by_role("combobox", name="Dataset", exact=True)
    box.click()
    options = page.get_by_role("option").all_inner_texts()
    box.press("Escape")
    return sorted(options)


def test_two_users_sign_in_see_their_own_and_the_teams_and_sign_out(tmp_path, deeptrain_home, monkeypatch):
    from oidc_provider_mock import User, run_server_in_thread

    from core.data import service
    from core.data.importer import import_dataset
    from core.store import users

    alice, vic, carl = "alice@example.org", "vic@example.org", "carl@example.org"
    import_dataset(alice, caltech_slice(tmp_path / "a", classes=("ant", "anchor"), per_class=3), "alices", workers=1)
    import_dataset(vic, caltech_slice(tmp_path / "v", classes=("ant", "anchor"), per_class=3), "vics", workers=1)
    import_dataset(carl, caltech_slice(tmp_path / "c", classes=("ant", "anchor"), per_class=3), "team-set",
                   workers=1)
    service.share_dataset(carl, "team-set", "team")
    users.seen(alice, "oidc")
    users.set_role(alice, "member")  # vic keeps the default role: viewer

    provider_users = [User(sub=s.split("@")[0], claims={"email": s, "email_verified": True}) for s in (alice, vic)]
    with run_server_in_thread(user_claims=provider_users) as provider:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(
            "[auth]\n"
            f'redirect_uri = "{url}/oauth2callback"\n'
            f'cookie_secret = "{secrets.token_hex(32)}"\n'
            'client_id = "deep-training-studio"\n'
            'client_secret = "not-checked-by-the-test-provider"\n'
            f'server_metadata_url = "http://localhost:{provider.server_port}/.well-known/openid-configuration"\n')
        with streamlit_server(deeptrain_home, port=port, extra_args=("--secrets.files", str(secrets_file))) as url, \
                chromium() as browser:
            first, second = (browser.new_context(viewport=VIEWPORT) for _ in range(2))  # two people, two cookie jars
            a_page, v_page = new_page(first), new_page(second)

            a_page.goto(url)  # nothing but the sign-in screen until signed in
            a_page.get_by_role("button", name="Sign in", exact=True).wait_for()
            wait_idle(a_page)
            assert "At a glance" not in a_page.inner_text("body")
            assert a_page.get_by_test_id("stSidebarNav").count() == 0

            sign_in(a_page, url, "alice")
            sign_in(v_page, url, "vic")
            expect(a_page.get_by_text(f"Signed in as {alice} (member)")).to_be_visible()
            expect(v_page.get_by_text(f"Signed in as {vic} (viewer)")).to_be_visible()

            nav = lambda page: page.get_by_test_id("stSidebarNav").inner_text()  # noqa: E731
            assert "Train" in nav(a_page) and "Users" not in nav(a_page)
            assert "Train" not in nav(v_page)  # a viewer cannot train: the page is not offered

            assert dataset_choices(a_page) == ["alices", f"{carl}/team-set"]
            assert dataset_choices(v_page) == [f"{carl}/team-set", "vics"]
            assert a_page.get_by_role("tab", name="Import").count() == 1
            assert v_page.get_by_role("tab", name="Import").count() == 0  # no import controls for a viewer
            for page in (a_page, v_page):
                assert "Traceback" not in page.inner_text("body")

            a_page.get_by_role("button", name="Sign out", exact=True).click()
            a_page.get_by_role("button", name="End session").click()  # the provider's end of its session too
            a_page.get_by_role("button", name="Sign in", exact=True).wait_for()
            assert not re.search("alices|team-set", a_page.inner_text("body"))
            v_page.reload()  # the other person stays signed in
            v_page.get_by_text(f"Signed in as {vic} (viewer)").wait_for()
            a_page.screenshot(path=str(tmp_path / "signed_out.png"))
