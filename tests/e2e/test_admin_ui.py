"""The admin UI in a real browser (Debian's Chromium, headless, driven by Playwright).

Admin signs in, creates an OpenID integration against the test provider, a user
connects through the provider and lands on ``/ui/connected``, the grant shows up
as active with its audit trail, gets a reconnect link, is revoked and shows as
revoked. Every page visited is saved under ``test-artifacts/screenshots/``.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (never ``playwright
install``). Without them the test is skipped, or fails with
``GRANTKEEPER_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer

pytestmark = [pytest.mark.browser, pytest.mark.oidc]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def _browser_missing() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
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
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
            context.set_default_timeout(15_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


class Shots:
    """Numbered full-page screenshots of every page visited."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.n = 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = SCREENSHOTS / f"admin-{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server("sqlite", tmp_path) as s:
        yield s


def test_admin_connects_sees_and_revokes_a_grant(page: Any, server: Server, oidc: OidcServer) -> None:
    from playwright.sync_api import expect

    shot = Shots(page)
    nav = page.get_by_role("navigation", name="Main")
    base = server.base_url
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )

    # -- sign in
    page.goto(base + "/ui")
    expect(page).to_have_url(base + "/ui/sign-in")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to grantkeeper")
    shot("sign-in")
    page.get_by_label("Admin API key").fill("gk_0000000000000000_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Sign-in failed")
    shot("sign-in-refused")
    page.get_by_label("Admin API key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base + "/ui")
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    shot("dashboard-empty")

    # -- create the integration
    client_id, client_secret = oidc.register_client([base + "/oauth/callback"])
    nav.get_by_role("link", name="Integrations").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Integrations")
    # gk-admin.js runs under the CSP: the Copy button is revealed
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    expect(page.get_by_label("OAuth redirect (callback) URL")).to_have_value(base + "/oauth/callback")
    page.get_by_role("link", name="New integration").click()
    shot("integration-new")
    page.get_by_label("Integration id").fill("acme")
    page.get_by_label("Provider", exact=True).select_option("oidc")
    page.get_by_label("Display name").fill("Acme Portal")
    page.get_by_label("Client id").fill(client_id)
    page.get_by_label("Client secret").fill(client_secret)
    page.get_by_label("Scopes").fill("openid offline_access api:read")
    page.get_by_label("Return URLs").fill(base + "/ui/connected")
    page.get_by_label("Issuer").fill(oidc.issuer)
    page.get_by_role("button", name="Create integration").click()
    expect(page.get_by_role("status")).to_have_text("The integration was created.")
    expect(page.get_by_role("link", name="acme")).to_be_visible()
    shot("integrations")
    assert client_secret not in page.content()

    # -- the end user connects: connect URL -> provider -> callback -> /ui/connected
    with server.client() as c:
        r = c.post(
            "/v1/connect/sessions",
            json={"integration_id": "acme", "user_id": "user-42", "return_to": base + "/ui/connected"},
        )
        assert r.status_code == 201, r.text
        connect_url = r.json()["connect_url"]
    page.goto(connect_url)
    page.wait_for_url(re.compile(re.escape(base + "/ui/connected") + r"\?.*status=success"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Account connected")
    shot("connected")

    # -- the grant in the admin UI
    page.goto(base + "/ui/grants")
    row = page.get_by_role("row").filter(has_text="user-42")
    expect(row).to_contain_text("acme")
    expect(row).to_contain_text("active")
    shot("grants")
    page.get_by_label("Status").select_option("revoked")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No grants match these filters.")).to_be_visible()
    shot("grants-filtered")
    page.get_by_role("link", name="Clear").click()
    page.get_by_role("link", name="user-42").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("user-42")
    expect(page.locator(".badge-active")).to_be_visible()
    trail = page.get_by_role("region", name="Audit trail")
    expect(trail).to_contain_text("grant.created")
    shot("grant")

    # reconnect link
    page.get_by_role("button", name="Create reconnect link").click()
    expect(page.get_by_label("Connect URL")).to_have_value(re.compile(re.escape(base) + "/connect/"))
    expect(page.get_by_role("region", name="Audit trail")).to_contain_text("connect_session.created")
    shot("grant-reconnect-link")

    # revoke (with a confirmation page)
    page.get_by_role("link", name="Revoke this grant…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Revoke this grant?")
    shot("revoke-confirm")
    page.get_by_role("button", name="Revoke grant").click()
    expect(page.get_by_role("status")).to_contain_text("The grant was revoked")
    expect(page.locator("h1 .badge-revoked")).to_have_text("revoked")
    expect(page.get_by_role("region", name="Audit trail")).to_contain_text("grant.deleted")
    shot("grant-revoked")
    with server.client() as c:
        grants = c.get("/v1/grants", params={"user_id": "user-42"}).json()["data"]
        assert [g["status"] for g in grants] == ["revoked"]

    nav.get_by_role("link", name="Grants").click()
    expect(page.get_by_role("row").filter(has_text="user-42")).to_contain_text("revoked")
    shot("grants-after-revoke")

    # the other sections
    nav.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Webhook endpoints")
    shot("webhooks")
    nav.get_by_role("link", name="Dashboard").click()
    expect(page.locator(".stat-revoked .stat-n")).to_have_text("1")
    shot("dashboard")

    # sign out
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(base + "/ui/sign-in")
    page.goto(base + "/ui/grants")
    expect(page).to_have_url(base + "/ui/sign-in")
    shot("signed-out")

    assert not csp_violations, csp_violations
