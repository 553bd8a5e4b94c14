"""The Connect form of ``api_key`` and ``basic`` integrations in a real browser.

The end user opens the connect URL, sees a form drawn from the entry's
``credential_fields`` (labels, password inputs for secrets, no script), types a wrong key
(the form comes back with a message, the secret not echoed), then the right one, and lands
on the app's ``return_to`` with ``grant_id`` and ``status=success``. Runs on SQLite and
PostgreSQL. Needs ``/usr/bin/chromium`` and the ``playwright`` package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from tests.support.credapi import CredApi
from tests.support.gk import Server, require_postgres, running_server

pytestmark = [pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
KEY = "sk_test_" + "FormTypedKey0123456789ab"
WRONG = "sk_test_" + "FormWrongKey0123456789ab"


def _browser_missing() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


@pytest.fixture
def page() -> Iterator[Any]:
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("GRANTKEEPER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"a browser is required (GRANTKEEPER_REQUIRE_BROWSER=1): {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # no JavaScript at all: the form must work without it
            context = browser.new_context(java_script_enabled=False, locale="en-US")
            context.set_default_timeout(15_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path) as s:
        yield s


def test_end_user_connects_an_api_key_with_the_form(server: Server, cred_api: CredApi, page: Any) -> None:
    from playwright.sync_api import expect

    cred_api.keys.add(KEY)
    app_url = cred_api.base_url + "/app/done"
    with server.client() as c:
        r = c.put(
            "/v1/integrations/stripe",
            json={"provider": "stripe-api-key", "api_base_url": cred_api.base_url + "/bearer", "return_urls": [app_url], "display_name": "Acme Books"},
        )
        assert r.status_code == 201, r.text
        s = c.post("/v1/connect/sessions", json={"integration_id": "stripe", "user_id": "u-42", "return_to": app_url})
        assert s.status_code == 201, s.text
    connect_url = s.json()["connect_url"]

    page.goto(connect_url)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Stripe")
    key_input = page.get_by_label("Secret or restricted key")
    assert key_input.get_attribute("type") == "password"
    assert key_input.get_attribute("required") is not None
    key_input.fill(WRONG)
    page.get_by_role("button", name="Connect Stripe (secret or restricted API key)").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    assert WRONG not in page.content()
    assert page.get_by_label("Secret or restricted key").input_value() == ""

    page.get_by_label("Secret or restricted key").fill(KEY)
    page.get_by_role("button", name="Connect Stripe (secret or restricted API key)").click()
    page.wait_for_url(app_url + "*")
    query = parse_qs(urlsplit(page.url).query)
    assert query["status"] == ["success"]
    gid = query["grant_id"][0]

    with server.client() as c:
        grant = c.get(f"/v1/grants/{gid}").json()
        assert grant["user_id"] == "u-42" and grant["status"] == "active"
        assert c.get(f"/v1/connect/sessions/{s.json()['id']}").json()["status"] == "completed"
        creds = c.post(f"/v1/grants/{gid}/credentials", json={})
        assert creds.json() == {"type": "api_key", "api_key": KEY}
    # single use: the link cannot be used again
    page.goto(connect_url)
    assert "already used" in page.content()


def test_basic_form_keeps_the_username_and_drops_the_password(server: Server, cred_api: CredApi, page: Any) -> None:
    from playwright.sync_api import expect

    cred_api.logins.add(("AC" + "f" * 32, "right-password"))
    app_url = cred_api.base_url + "/app/done"
    with server.client() as c:
        assert c.put(
            "/v1/integrations/tw",
            json={"provider": "twilio", "api_base_url": cred_api.base_url + "/basic", "return_urls": [app_url]},
        ).status_code == 201
        s = c.post("/v1/connect/sessions", json={"integration_id": "tw", "user_id": "u1", "return_to": app_url}).json()
    page.goto(s["connect_url"])
    page.get_by_label("Account SID or API key SID").fill("AC" + "f" * 32)
    page.get_by_label("Auth token or API key secret").fill("wrong-password")
    page.get_by_role("button", name="Connect Twilio").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert page.get_by_label("Account SID or API key SID").input_value() == "AC" + "f" * 32
    assert page.get_by_label("Auth token or API key secret").input_value() == ""
    assert "wrong-password" not in page.content()
    page.get_by_label("Auth token or API key secret").fill("right-password")
    page.get_by_role("button", name="Connect Twilio").click()
    page.wait_for_url(app_url + "*")
    assert parse_qs(urlsplit(page.url).query)["status"] == ["success"]
