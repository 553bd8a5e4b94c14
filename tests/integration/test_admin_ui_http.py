"""The admin UI over plain HTTP (no browser), against a real server on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.gk import Server, running_server

from grantkeeper.web.pages import PAGE_HEADERS

CSP = PAGE_HEADERS["Content-Security-Policy"]
CLIENT_SECRET = "cs-UI-secret+/=:%-0123456789"
REFRESH_TOKEN = "rt-ui-refresh-token-0123456789"
ACCESS_TOKEN = "at-ui-access-token-0123456789"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browserless:
    """A cookie-keeping client that fills in the forms' CSRF tokens like a browser would."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30.0)
        self.pages: list[str] = []

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        r = self.http.get(path, **kw)
        self.pages.append(r.text)
        return r

    def csrf(self, path: str) -> str:
        r = self.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        m = _CSRF.search(r.text)
        assert m is not None, f"no CSRF token on {path}"
        return m.group(1)

    def post_form(self, form_page: str, action: str, data: dict[str, Any]) -> httpx.Response:
        r = self.http.post(action, data={"csrf": self.csrf(form_page), **data})
        self.pages.append(r.text)
        return r

    def sign_in(self, key: str) -> httpx.Response:
        return self.post_form("/ui/sign-in", "/ui/sign-in", {"api_key": key})


@pytest.fixture
def ui(gk: Server) -> Any:
    client = Browserless(gk)
    yield client
    client.close()


def signed_in(ui: Browserless) -> Browserless:
    r = ui.sign_in(ui.server.admin_key)
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text[:500]
    return ui


def create_key(server: Server, *scopes: str) -> tuple[str, str]:
    args = ["api-keys", "create", "--name", "t"]
    for s in scopes:
        args += ["--scope", s]
    out = json.loads(server.cli(*args, "--json").stdout)
    return str(out["id"]), str(out["key"])


def setup_data(server: Server) -> dict[str, str]:
    """An oauth2 integration, an imported grant (no provider call) and a webhook endpoint."""
    with server.client() as c:
        r = c.put(
            "/v1/integrations/crm",
            json={
                "provider": "oauth2",
                "client_id": "crm-client",
                "client_secret": CLIENT_SECRET,
                "scopes": ["read", "write"],
                "return_urls": [server.base_url + "/ui/connected"],
                "endpoints": {
                    "authorization_url": "http://127.0.0.1:9/authorize",
                    "token_url": "http://127.0.0.1:9/token",
                },
            },
        )
        assert r.status_code == 201, r.text
        g = c.post(
            "/v1/grants",
            json={
                "integration_id": "crm",
                "user_id": "user-<b>&\"1\"",
                "refresh_token": REFRESH_TOKEN,
                "access_token": ACCESS_TOKEN,
                "verify": False,
            },
        )
        assert g.status_code == 201, g.text
        w = c.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks", "events": ["*"]})
        assert w.status_code == 201, w.text
    return {"grant_id": g.json()["id"], "endpoint_id": w.json()["id"], "webhook_secret": w.json()["secret"]}


# --------------------------------------------------------------------------- sign-in


def test_sign_in_rejects_wrong_and_non_admin_keys_with_the_same_message(gk: Server, ui: Browserless) -> None:
    _, reader_key = create_key(gk, "grants:read", "integrations:read")
    key_id = gk.admin_key.split("_")[1]
    wrong_secret = f"gk_{key_id}_" + "A" * 43
    unknown = "gk_0000000000000000_" + "A" * 43
    answers = []
    for key in (reader_key, wrong_secret, unknown, "not a key"):
        r = ui.sign_in(key)
        assert r.status_code == 401
        assert "gk_ui=" not in r.headers.get("set-cookie", "")
        assert key not in r.text
        assert r.headers["content-security-policy"] == CSP
        answers.append(re.search(r'<p class="errors"[^>]*>(.*?)</p>', r.text, re.S))
    assert all(a is not None for a in answers)
    assert len({a.group(1) for a in answers if a is not None}) == 1
    # and not signed in
    assert ui.get("/ui").status_code == 303


def test_session_cookie_flags_and_value(gk: Server, ui: Browserless) -> None:
    r = ui.sign_in(gk.admin_key)
    assert r.status_code == 303
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("gk_ui="))
    flags = [f.strip().lower() for f in session.split(";")[1:]]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # http on loopback: the one case without Secure
    assert not any(f.startswith(("max-age", "expires")) for f in flags)  # ends with the browser
    value = session.split(";")[0].split("=", 1)[1]
    secret = gk.admin_key.split("_", 2)[2]
    assert gk.admin_key not in value and secret not in value
    # a tampered cookie is no session
    ui.http.cookies.set("gk_ui", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert ui.get("/ui").status_code == 303


def test_secure_cookie_when_public_url_is_https(tmp_path: Path) -> None:
    with running_server("sqlite", tmp_path, worker=False, GRANTKEEPER_PUBLIC_URL="https://gk.example.test") as server:
        client = Browserless(server)
        try:
            r = client.get("/ui/sign-in")
            assert "__Host-gk_ui_pre=" in r.headers["set-cookie"] and "Secure" in r.headers["set-cookie"]
            pre = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
            csrf = _CSRF.search(r.text)
            assert csrf is not None
            r = client.http.post(
                "/ui/sign-in",
                data={"csrf": csrf.group(1), "api_key": server.admin_key},
                cookies={"__Host-gk_ui_pre": pre},
            )
            assert r.status_code == 303, r.text[:300]
            session = next(c for c in r.headers.get_list("set-cookie") if c.startswith("__Host-gk_ui="))
            flags = [f.strip().lower() for f in session.split(";")[1:]]
            assert {"secure", "httponly", "samesite=strict", "path=/"} <= set(flags)
        finally:
            client.close()


def test_revoked_key_session_ends_at_once(gk: Server, ui: Browserless) -> None:
    key_id, key = create_key(gk, "admin")
    r = ui.sign_in(key)
    assert r.status_code == 303
    assert ui.get("/ui").status_code == 200
    csrf = ui.csrf("/ui/webhooks")
    gk.cli("api-keys", "revoke", key_id)
    r = ui.get("/ui")
    assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in"
    r = ui.http.post("/ui/webhooks", data={"csrf": csrf, "url": "http://127.0.0.1:9/x", "events": "*"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in"
    with gk.client() as c:
        assert c.get("/v1/webhook-endpoints").json()["data"] == []


# --------------------------------------------------------------------------- CSRF


def test_posts_without_or_with_a_wrong_csrf_token_are_refused(gk: Server, ui: Browserless) -> None:
    # sign-in itself: no pre-session cookie / wrong token
    fresh = httpx.Client(base_url=gk.base_url, follow_redirects=False)
    try:
        r = fresh.post("/ui/sign-in", data={"api_key": gk.admin_key})
        assert r.status_code == 403 and "set-cookie" not in r.headers
        fresh.get("/ui/sign-in")
        r = fresh.post("/ui/sign-in", data={"api_key": gk.admin_key, "csrf": "x" * 43})
        assert r.status_code == 403
    finally:
        fresh.close()
    signed_in(ui)
    ids = setup_data(gk)
    good = ui.csrf("/ui/webhooks")
    targets = [
        ("/ui/webhooks", {"url": "http://127.0.0.1:9/y", "events": "*"}),
        (f"/ui/webhooks/{ids['endpoint_id']}/delete", {}),
        (f"/ui/grants/{ids['grant_id']}/revoke", {}),
        (f"/ui/grants/{ids['grant_id']}/reconnect", {"return_to": gk.base_url + "/ui/connected"}),
        ("/ui/integrations/new", {"id": "x1", "provider": "oidc", "client_id": "c", "return_urls": "http://127.0.0.1:9/"}),
        ("/ui/integrations/crm", {"provider": "oauth2", "client_id": "evil", "return_urls": "http://127.0.0.1:9/"}),
        ("/ui/sign-out", {}),
    ]
    for path, data in targets:
        for token in (None, "", good[:-4] + "AAAA", "A" * 43):
            body = dict(data)
            if token is not None:
                body["csrf"] = token
            r = ui.http.post(path, data=body)
            assert r.status_code == 403, (path, token, r.status_code)
            assert r.headers["content-security-policy"] == CSP
        # right token, foreign Origin: refused too
        r = ui.http.post(path, data={**data, "csrf": good}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403, path
    with gk.client() as c:
        assert c.get(f"/v1/grants/{ids['grant_id']}").json()["status"] == "active"
        assert len(c.get("/v1/webhook-endpoints").json()["data"]) == 1
        assert c.get("/v1/integrations/crm").json()["client_id"] == "crm-client"
        assert c.get("/v1/integrations/x1").status_code == 404
    assert ui.get("/ui").status_code == 200  # still signed in


# --------------------------------------------------------------------------- pages


def test_every_section_renders_with_csp_and_no_secret(gk: Server, ui: Browserless) -> None:
    signed_in(ui)
    ids = setup_data(gk)
    gid, eid = ids["grant_id"], ids["endpoint_id"]
    pages = [
        "/ui",
        "/ui/integrations",
        "/ui/integrations/new",
        "/ui/integrations/crm",
        "/ui/grants",
        "/ui/grants?status=active&integration_id=crm&user_id=user-%3Cb%3E%26%221%22",
        "/ui/grants?status=bogus&integration_id=..%2F&offset=-5",
        f"/ui/grants/{gid}",
        f"/ui/grants/{gid}/revoke",
        "/ui/webhooks",
        f"/ui/webhooks/{eid}/delete",
        "/ui/connected?status=success&grant_id=" + gid,
        "/ui/connected?status=error&error=access_denied",
    ]
    seen: dict[str, str] = {}
    for path in pages:
        r = ui.get(path)
        seen[path] = r.text
        assert r.status_code == 200, (path, r.status_code, r.text[:800])
        assert r.headers["content-type"].startswith("text/html")
        for name, value in PAGE_HEADERS.items():
            assert r.headers[name] == value, (path, name)
        assert "<h1" in r.text
    grant_page = seen[f"/ui/grants/{gid}"]
    assert "user-&lt;b&gt;&amp;&#34;1&#34;" in grant_page  # escaped, not markup
    assert "grant.created" in grant_page and "Audit trail" in grant_page
    filtered = seen["/ui/grants?status=active&integration_id=crm&user_id=user-%3Cb%3E%26%221%22"]
    assert f"/ui/grants/{gid}" in filtered
    # unknown things are HTML 404s, not stack traces
    for path in ("/ui/grants/00000000-0000-0000-0000-000000000000", "/ui/grants/nope", "/ui/integrations/nope", "/ui/integrations/NOPE!", "/ui/webhooks/nope/delete", "/ui/no/such/page"):
        r = ui.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-security-policy"] == CSP
    secret_parts = [gk.admin_key, gk.admin_key.split("_", 2)[2], CLIENT_SECRET, REFRESH_TOKEN, ACCESS_TOKEN, ids["webhook_secret"]]
    for html in ui.pages:
        for s in secret_parts:
            assert s not in html


def test_actions_through_the_ui_are_audited_as_ui_actor(gk: Server, ui: Browserless) -> None:
    signed_in(ui)
    key_id = gk.admin_key.split("_")[1]
    form = {
        "id": "crm",
        "provider": "oauth2",
        "client_id": "crm-client",
        "client_secret": CLIENT_SECRET,
        "scopes": "read write",
        "return_urls": gk.base_url + "/ui/connected\n" + gk.base_url + "/ui/connected/other",
        "authorization_url": "http://127.0.0.1:9/authorize",
        "token_url": "http://127.0.0.1:9/token",
        "token_export": "never",
    }
    r = ui.post_form("/ui/integrations/new", "/ui/integrations/new", form)
    assert r.status_code == 303, r.text[:1500]
    # the same id again is refused, and the secret is not echoed back
    r = ui.post_form("/ui/integrations/new", "/ui/integrations/new", form)
    assert r.status_code == 422 and "already exists" in r.text
    # invalid input: messages, no secret
    r = ui.post_form("/ui/integrations/new", "/ui/integrations/new", {**form, "id": "crm2", "provider": "oauth2", "authorization_url": "", "token_url": ""})
    assert r.status_code == 422 and "endpoints" in r.text
    # edit with an empty secret keeps the stored one
    edit = {k: v for k, v in form.items() if k != "id"}
    r = ui.post_form("/ui/integrations/crm", "/ui/integrations/crm", {**edit, "client_secret": "", "display_name": "The CRM"})
    assert r.status_code == 303, r.text[:1500]
    with gk.client() as c:
        integ = c.get("/v1/integrations/crm").json()
        assert integ["client_secret_set"] is True and integ["display_name"] == "The CRM"
        g = c.post("/v1/grants", json={"integration_id": "crm", "user_id": "u1", "refresh_token": REFRESH_TOKEN, "verify": False})
        assert g.status_code == 201, g.text
    gid = g.json()["id"]
    page = ui.get("/ui/integrations/crm").text
    assert "A secret is stored" in page and gk.base_url + "/oauth/callback" in page

    # reconnect link
    r = ui.post_form(f"/ui/grants/{gid}", f"/ui/grants/{gid}/reconnect", {"return_to": gk.base_url + "/ui/connected"})
    assert r.status_code == 201
    m = re.search(r'value="(http://[^"]+/connect/[^"]+)"', r.text)
    assert m is not None, r.text[:2000]
    r = ui.post_form(f"/ui/grants/{gid}", f"/ui/grants/{gid}/reconnect", {"return_to": "https://evil.example/"})
    assert r.status_code == 422

    # webhooks: the secret is shown once
    r = ui.post_form("/ui/webhooks", "/ui/webhooks", {"url": "http://127.0.0.1:9/hooks", "events": ["grant.created", "grant.deleted"]})
    assert r.status_code == 201
    secret = re.search(r'value="(whsec_[^"]+)"', r.text)
    assert secret is not None
    listing = ui.get("/ui/webhooks").text
    assert secret.group(1) not in listing and "http://127.0.0.1:9/hooks" in listing
    r = ui.post_form("/ui/webhooks", "/ui/webhooks", {"url": "not a url", "events": []})
    assert r.status_code == 422
    with gk.client() as c:
        (endpoint,) = c.get("/v1/webhook-endpoints").json()["data"]

    # revoke, then the webhook delivery of grant.deleted shows up on the page
    r = ui.post_form(f"/ui/grants/{gid}/revoke", f"/ui/grants/{gid}/revoke", {})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/ui/grants/{gid}?notice=revoked-")
    page = ui.get(r.headers["location"]).text
    assert 'badge-revoked' in page and "The grant was revoked" in page
    assert "grant.deleted" in ui.get("/ui/webhooks").text

    r = ui.post_form(f"/ui/webhooks/{endpoint['id']}/delete", f"/ui/webhooks/{endpoint['id']}/delete", {})
    assert r.status_code == 303

    r = ui.post_form("/ui", "/ui/sign-out", {})
    assert r.status_code == 303 and r.headers["location"] == "/ui/sign-in"
    assert ui.get("/ui").status_code == 303

    with gk.client() as c:
        events = c.get("/v1/audit-events", params={"limit": 200}).json()["data"]
    by_action: dict[str, set[str]] = {}
    for e in events:
        by_action.setdefault(e["action"], set()).add(e["actor"])
    actor = f"ui:{key_id}"
    for action in (
        "ui.signed_in",
        "integration.created",
        "integration.updated",
        "connect_session.created",
        "webhook_endpoint.created",
        "grant.deleted",
        "webhook_endpoint.deleted",
        "ui.signed_out",
    ):
        assert actor in by_action.get(action, set()), (action, by_action)
    for html in ui.pages:
        assert CLIENT_SECRET not in html and REFRESH_TOKEN not in html and gk.admin_key not in html
    log = gk.log_text()
    for secret_value in (gk.admin_key.split("_", 2)[2], CLIENT_SECRET, REFRESH_TOKEN, secret.group(1)):
        assert secret_value not in log


def test_dashboard_chart_counts_refresh_outcomes(gk: Server, ui: Browserless) -> None:
    signed_in(ui)
    page = ui.get("/ui").text
    assert "<svg" in page and 'role="img"' in page and "No refreshes in the last 24 hours" in page
    assert "<th scope=\"col\">Hour (UTC)</th>" in page


def test_build_chart_geometry() -> None:
    from grantkeeper.web.ui_stats import HOURS, build_chart

    counts = [[0, 0, 0] for _ in range(HOURS)]
    counts[23] = [7, 2, 1]
    counts[0] = [3, 0, 0]
    chart = build_chart(0, counts)
    assert chart.totals == (10, 2, 1)
    assert chart.max_value >= 10 and not chart.empty
    assert len(chart.bars) == 4 and all(b.height > 0 for b in chart.bars)
    # the stacked bar of the last hour fits the plot and the tallest is proportional
    last = [b for b in chart.bars if b.label.startswith("23:00")]
    assert abs(sum(b.height for b in last) - (chart.height - chart.bottom - chart.top) * 10 / chart.max_value) < 0.5
    assert build_chart(0, [[0, 0, 0]] * HOURS).empty
