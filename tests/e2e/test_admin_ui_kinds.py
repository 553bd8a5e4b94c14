"""The admin UI's kind-aware integration form in a real browser (Debian's Chromium,
headless, driven by Playwright), at 1280 and 390 px wide: an admin creates an ``api_key``
integration and a ``client_credentials`` one through the form, without typing any JSON.

Screenshots go to ``test-artifacts/screenshots/admin-kinds-*.png``. Needs ``/usr/bin/chromium``
and the ``playwright`` package; skipped without them (fails with
``GRANTKEEPER_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e import test_first_hour_ui as first_hour
from tests.e2e.test_admin_ui import SCREENSHOTS
from tests.support.gk import Server, running_server

pytestmark = [pytest.mark.browser]

browser = first_hour.browser
CC_SECRET = "cc-e2e-client-secret-0123456789"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server("sqlite", tmp_path, worker=False) as s:
        yield s


def shot(page: Any, name: str, width: int) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"admin-kinds-{name}-{width}.png"), full_page=True)


def new_integration_of_kind(page: Any, server: Server, kind_label: str) -> None:
    from playwright.sync_api import expect

    page.goto(server.base_url + "/ui/integrations")
    page.get_by_role("link", name="New integration").click()
    page.get_by_role("navigation", name="Credential kind").get_by_role("link", name=kind_label).click()
    expect(page.get_by_role("link", name=kind_label)).to_have_attribute("aria-current", "page")


def test_api_key_and_client_credentials_integrations_through_the_form(
    browser: Any, server: Server
) -> None:
    from playwright.sync_api import expect

    for width in first_hour.WIDTHS:
        page = first_hour.open_page(browser, width)
        first_hour.sign_in(page, server)

        # -- an API key sent in a named header, proved by a verification request
        new_integration_of_kind(page, server, "API key")
        provider = page.get_by_label("Provider", exact=True)
        expect(provider.locator("option", has_text="Stripe")).to_have_count(1)
        expect(provider.locator('option[value="google"]')).to_have_count(0)
        expect(page.get_by_label("Client secret")).to_have_count(0)  # not this kind's field
        page.get_by_label("Integration id").fill(f"keyed-{width}")
        provider.select_option("api_key")
        page.get_by_role("textbox", name=re.compile(r"^API base URL")).fill("http://127.0.0.1:9/api")
        page.get_by_label("Placement").select_option("header")
        page.get_by_label("Header or parameter name").fill("X-Api-Key")
        page.get_by_label("Value template").fill("{api_key}")
        page.get_by_label("Path under the API base URL").fill("/v1/me")
        first_hour.assert_fits(page, width, "new api_key integration")
        shot(page, "api-key-form", width)
        page.get_by_role("button", name="Create integration").click()
        expect(page.get_by_role("status")).to_have_text("The integration was created.")

        # -- a client-credentials client with its token URL and an audience
        new_integration_of_kind(page, server, "Client credentials")
        page.get_by_label("Integration id").fill(f"svc-{width}")
        page.get_by_label("Provider", exact=True).select_option("client_credentials")
        page.get_by_label("Client id").fill("svc-client")
        page.get_by_label("Client secret").fill(CC_SECRET)
        page.get_by_label("Token URL").fill("http://127.0.0.1:9/oauth/token")
        page.get_by_label("Scopes").fill("api:read")
        page.get_by_label("Token request parameters").fill("audience=https://api.example")
        first_hour.assert_fits(page, width, "new client_credentials integration")
        shot(page, "client-credentials-form", width)
        page.get_by_role("button", name="Create integration").click()
        expect(page.get_by_role("status")).to_have_text("The integration was created.")
        shot(page, "integrations", width)

        # -- the edit page: the secret is "stored", never shown
        page.goto(server.base_url + f"/ui/integrations/svc-{width}")
        expect(page.get_by_text("A secret is stored")).to_be_visible()
        assert CC_SECRET not in page.content()
        first_hour.assert_fits(page, width, "client_credentials integration")
        shot(page, "client-credentials-edit", width)
        page.context.close()

    with server.client() as c:
        keyed = c.get("/v1/integrations/keyed-390").json()
        svc = c.get("/v1/integrations/svc-1280").json()
    assert keyed["stamp"] == {"in": "header", "name": "X-Api-Key", "template": "{api_key}"}
    assert keyed["verify_request"] == {"method": "GET", "path": "/v1/me", "expect_status": 200}
    assert svc["client_secret_set"] is True and svc["token_params"] == {"audience": "https://api.example"}
    assert svc["endpoints"] == {"token_url": "http://127.0.0.1:9/oauth/token"}
