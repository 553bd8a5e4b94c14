"""Issue 13 in a real browser (Debian's Chromium through Playwright): the Connect page for a
catalog provider (Google) and a generic one, and the admin UI, at 1280 and 390 px wide.

Every page is kept as a screenshot under ``test-artifacts/screenshots/first-hour-*.png``.
At 390 px no page may be wider than the screen and no table wider than its box.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.test_admin_ui import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, _browser_missing
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer

pytestmark = [pytest.mark.browser, pytest.mark.oidc]

WIDTHS = (1280, 390)
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"


@pytest.fixture
def browser() -> Iterator[Any]:
    import os

    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("GRANTKEEPER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"a browser is required (GRANTKEEPER_REQUIRE_BROWSER=1): {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(browser: Any, width: int) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900 if width > 600 else 844}, locale="en-US")
    context.set_default_timeout(15_000)
    return context.new_page()


def shot(page: Any, name: str, width: int) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"first-hour-{name}-{width}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_fits(page: Any, width: int, what: str) -> None:
    """Nothing sticks out sideways: not the page, not a table inside its box."""
    page_width = page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= width, f"{what}: the page is {page_width} px wide on a {width} px screen"
    wide = page.evaluate(
        "[...document.querySelectorAll('table')].filter(t => t.scrollWidth > t.clientWidth + 1)"
        ".map(t => t.scrollWidth + '>' + t.clientWidth)"
    )
    assert not wide, f"{what}: tables wider than their box: {wide}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server("sqlite", tmp_path, worker=False) as s:
        yield s


def test_connect_pages_google_and_generic(browser: Any, server: Server, oidc: OidcServer) -> None:
    from playwright.sync_api import expect

    from grantkeeper.providers import load_catalog

    gmail = load_catalog().get("google-mail")
    with server.client() as c:
        r = c.put("/v1/integrations/google-mail", json={
            "provider": "google-mail", "client_id": "1234567890-abc.apps.googleusercontent.com", "client_secret": "s",
            "display_name": "Acme CRM", "scopes": ["openid", "email", GMAIL],
            "return_urls": [server.base_url + "/ui/connected"], "connect_page": True,
        })  # fmt: skip
        assert r.status_code == 201, r.text
    setup_oidc_integration(
        server, oidc, "acme", display_name="Acme ID", connect_page=True,
        scopes=("openid", "email", "offline_access", "api:read"), return_urls=[server.base_url + "/ui/connected"],
    )  # fmt: skip

    def session(integration: str) -> str:
        return_to = server.base_url + "/ui/connected"
        with server.client() as c:
            r = c.post("/v1/connect/sessions", json={"integration_id": integration, "user_id": "user-42", "return_to": return_to})
            assert r.status_code == 201, r.text
            url: str = r.json()["connect_url"]
            return url

    for width in WIDTHS:
        page = open_page(browser, width)
        page.goto(session("google-mail"))
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Connect your {gmail.display_name} account")
        expect(page.get_by_text("Acme CRM", exact=True)).to_be_visible()
        scopes = page.get_by_role("list", name="It will be able to")
        for scope in ("openid", "email", GMAIL):
            expect(scopes).to_contain_text(gmail.describe_scope(scope) or "?")
        expect(page.get_by_role("button", name=f"Continue to {gmail.display_name}")).to_be_visible()
        assert_fits(page, width, "Connect page (Google)")
        shot(page, "connect-google", width)

        page.goto(session("acme"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Connect your Acme ID account")
        assert "Generic OpenID Connect" not in page.content()
        expect(page.get_by_role("list", name="It will be able to")).to_contain_text("See your email address")
        assert_fits(page, width, "Connect page (generic)")
        shot(page, "connect-generic", width)
        # Continue really goes through the provider and back
        page.get_by_role("button", name="Continue to Acme ID").click()
        page.wait_for_url(re.compile(r".*status=success.*"))
        page.context.close()


def sign_in(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    page.goto(server.base_url + "/")  # / leads to the admin UI
    expect(page).to_have_url(server.base_url + "/ui/sign-in")
    page.get_by_label("Admin API key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")


def test_admin_ui_at_1280_and_390(browser: Any, server: Server, oidc: OidcServer) -> None:
    from playwright.sync_api import expect

    setup_oidc_integration(server, oidc, "acme-portal-with-a-long-name", display_name="Acme Portal")
    grant = connect_grant(server, oidc, "acme-portal-with-a-long-name", "user-with-a-rather-long-identifier@example.com")
    with server.client() as c:
        c.post(f"/v1/grants/{grant}/token")
        r = c.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks/grantkeeper", "events": ["grant.invalid"]})
        assert r.status_code == 201, r.text
    pages = {
        "dashboard": "/ui",
        "integrations": "/ui/integrations",
        "integration-new": "/ui/integrations/new",
        "grants": "/ui/grants",
        "grant": f"/ui/grants/{grant}",
        "webhooks": "/ui/webhooks",
    }
    for width in WIDTHS:
        page = open_page(browser, width)
        sign_in(page, server)
        for name, path in pages.items():
            page.goto(server.base_url + path)
            expect(page.locator("h1")).to_be_visible()
            assert_fits(page, width, name)
            shot(page, f"admin-{name}", width)
        page.context.close()


def test_new_integration_form(browser: Any, server: Server) -> None:
    from playwright.sync_api import expect

    from grantkeeper.providers import load_catalog

    catalog = load_catalog()
    for width in WIDTHS:
        page = open_page(browser, width)
        sign_in(page, server)
        page.goto(server.base_url + "/ui/integrations/new")
        provider = page.get_by_label("Provider", exact=True)
        # no provider is chosen for you (it used to be oidc, in a list of 150)
        assert provider.evaluate("s => s.value") == ""
        assert provider.evaluate("s => s.options.length") > 100
        scopes = page.get_by_label("Scopes")
        provider.select_option("google-mail")
        expect(scopes).to_have_value(" ".join(catalog.get("google-mail").default_scopes))
        provider.select_option("github")
        expect(scopes).to_have_value(" ".join(catalog.get("github").default_scopes))
        scopes.fill("repo")  # typed by hand: a later choice leaves it alone
        provider.select_option("gitlab")
        expect(scopes).to_have_value("repo")
        shot(page, "integration-new-prefilled", width)

        # everything wrong at once: every error at once, each beside its field
        page.goto(server.base_url + "/ui/integrations/new")
        page.get_by_label("Integration id").fill("Not An Id!")
        page.get_by_label("Return URLs").fill("not a url")
        page.get_by_role("button", name="Create integration").click()
        expect(page.get_by_role("heading", name="Please fix the following")).to_be_visible()
        for field, error_id in (("Integration id", "f-id-error"), ("Provider", "f-provider-error"), ("Client id", "f-client-id-error"), ("Return URLs", "f-return-error")):
            box = page.get_by_label(field, exact=True)
            expect(box).to_have_attribute("aria-invalid", "true")
            assert error_id in (box.get_attribute("aria-describedby") or "")
            expect(page.locator(f"#{error_id}")).to_be_visible()
        # what was typed is kept
        expect(page.get_by_label("Integration id")).to_have_value("Not An Id!")
        assert_fits(page, width, "form with errors")
        shot(page, "integration-form-errors", width)
        page.context.close()
