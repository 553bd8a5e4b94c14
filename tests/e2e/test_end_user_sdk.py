"""The browser SDK in a real browser (Debian's Chromium, headless, driven by Playwright).

An app page served from a second loopback origin (``AppIssuer``, not grantkeeper's)
loads ``/sdk/grantkeeper.js`` from grantkeeper, gets a subject token (a JWT) from the
app's test login endpoint, starts a connect for its user, comes back from the provider,
fetches the user's provider access token through the RFC 8693 exchange, calls the
provider's userinfo endpoint from the browser with it (CORS allowed for the app origin
on the test provider), lists its grants and disconnects. Screenshots of every step go
to ``test-artifacts/screenshots/`` (gitignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.test_admin_ui import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, _browser_missing
from tests.support.flows import setup_oidc_integration
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer
from tests.support.subjects import AppIssuer

pytestmark = [pytest.mark.browser, pytest.mark.oidc]

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Example app</title>
<style>body{font:15px system-ui;margin:2rem;max-width:60rem} pre{background:#f4f4f4;padding:.5rem;white-space:pre-wrap}</style>
</head><body>
<h1>Example app (user <span id="user">USER</span>)</h1>
<p><button id="connect">Connect Acme</button> <button id="token">Get my Acme token</button>
<button id="grants">My connections</button> <button id="disconnect">Disconnect</button></p>
<h2>Status</h2><pre id="status">loading</pre>
<h2>Userinfo from the provider (called by this page)</h2><pre id="userinfo">-</pre>
<h2>My connections</h2><pre id="list">-</pre>
<script type="module">
import { GrantKeeper } from "GK_BASE/sdk/grantkeeper.js";
const $ = (id) => document.getElementById(id);
const show = (id, v) => { $(id).textContent = typeof v === "string" ? v : JSON.stringify(v, null, 2); };
async function login() {
  const r = await fetch("/login?user=" + encodeURIComponent("USER"));
  return (await r.json()).token;
}
const gk = new GrantKeeper({ baseUrl: "GK_BASE", getSubjectToken: login });
window.gk = gk;
const params = new URLSearchParams(location.search);
show("status", params.get("status") ? "back from connect: " + params.get("status") : "ready");
let grantId = params.get("grant_id");
$("connect").onclick = () => gk.connect("acme", { returnTo: location.origin + "/app/index.html" })
  .catch((e) => show("status", "connect failed: " + e.message));
$("token").onclick = async () => {
  try {
    const t = await gk.getAccessToken("acme", { scope: "openid api:read" });
    show("status", "token: " + t.token_type + " " + t.issued_token_type + " expires_in=" + t.expires_in
      + " refresh_token=" + ("refresh_token" in t));
    const info = await fetch("USERINFO", { headers: { Authorization: "Bearer " + t.access_token } });
    show("userinfo", await info.json());
  } catch (e) { show("status", "token failed: " + e.error + " " + e.message); }
};
$("grants").onclick = async () => {
  const list = await gk.grants();
  if (list.length) grantId = list[0].id;
  show("list", list.map((g) => ({ id: g.id, integration_id: g.integration_id, status: g.status, account: g.provider_account_id })));
};
$("disconnect").onclick = async () => {
  const r = await gk.disconnect(grantId);
  show("status", "disconnected: " + r.status + " (provider revocation " + r.provider_revocation + ")");
  try { await gk.getAccessToken("acme"); } catch (e) { show("userinfo", "after disconnect: " + e.error); }
};
</script></body></html>
"""


@pytest.fixture
def page() -> Iterator[Any]:
    import os

    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("GRANTKEEPER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"a browser is required (GRANTKEEPER_REQUIRE_BROWSER=1): {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
            context.set_default_timeout(20_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server("sqlite", tmp_path) as s:
        yield s


def test_app_page_connects_fetches_its_token_calls_userinfo_and_disconnects(
    page: Any, server: Server, oidc: OidcServer, app_issuer: AppIssuer
) -> None:
    from playwright.sync_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    n = 0

    def shot(name: str) -> None:
        nonlocal n
        n += 1
        page.screenshot(path=str(SCREENSHOTS / f"sdk-{n:02d}-{name}.png"), full_page=True)

    user = "browser-user-1"
    oidc.allow_cors(app_issuer.origin)
    oidc.set_account("dave")
    setup_oidc_integration(server, oidc, "acme", client_access=True, return_urls=[app_issuer.origin + "/app"])
    with server.client() as c:
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body()).status_code == 201
    html = PAGE.replace("GK_BASE", server.base_url).replace("USERINFO", oidc.userinfo_endpoint).replace("USER", user)
    url = app_issuer.add_page("/app/index.html", html)
    failed: list[tuple[int, str]] = []
    page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)

    page.goto(url)
    expect(page.locator("#status")).to_have_text("ready")
    shot("app-ready")

    # connect: the SDK asks /v1/me/connect-sessions and navigates to the provider and back
    page.locator("#connect").click()
    page.wait_for_url(app_issuer.origin + "/app/index.html?*")
    expect(page.locator("#status")).to_have_text("back from connect: success")
    assert "grant_id=" in page.url
    shot("back-from-connect")

    # the user's own provider token, used from the browser at the provider's userinfo
    page.locator("#token").click()
    expect(page.locator("#userinfo")).to_contain_text('"sub": "dave"')
    expect(page.locator("#status")).to_contain_text("token: Bearer urn:ietf:params:oauth:token-type:access_token")
    expect(page.locator("#status")).to_contain_text("refresh_token=false")
    shot("token-and-userinfo")

    page.locator("#grants").click()
    expect(page.locator("#list")).to_contain_text('"status": "active"')
    listed = json.loads(page.locator("#list").text_content() or "[]")
    assert len(listed) == 1 and listed[0]["account"] == "dave"
    shot("connections")

    page.locator("#disconnect").click()
    expect(page.locator("#status")).to_have_text("disconnected: revoked (provider revocation succeeded)")
    expect(page.locator("#userinfo")).to_have_text("after disconnect: invalid_grant")
    page.locator("#grants").click()
    expect(page.locator("#list")).to_have_text("[]")
    shot("disconnected")

    with server.client() as c:
        grants = c.get("/v1/grants", params={"user_id": user}).json()["data"]
        events = c.get("/v1/audit-events", params={"grant_id": grants[0]["id"], "limit": 50}).json()["data"]
    assert grants[0]["status"] == "revoked"
    actors = {(e["action"], e["actor"]) for e in events}
    assert ("token.issued", f"user:{user}") in actors and ("grant.deleted", f"user:{user}") in actors
    # the only failed requests: the deliberate exchange after disconnect (and a favicon)
    failed = [(s, u) for s, u in failed if not u.endswith("/favicon.ico")]
    assert failed == [(400, server.base_url + "/oauth/token")], failed
