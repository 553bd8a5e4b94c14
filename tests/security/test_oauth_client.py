"""The OAuth client checklist (SECURITY.md section 1) where tests/integration does not
already cover it: C1 (no webhook, other environment), C2, C6, C7, C9, C14 (payloads), C15.

Everything runs against a real ``grantkeeper serve`` and the real oidc-provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from tests.security.fake_as import FakeAS
from tests.support.flows import connect_grant, setup_oidc_integration, start_connect
from tests.support.gk import Server, WebhookSink, db_vault, master_key
from tests.support.oidc import OidcServer, authorize

from grantkeeper.config import Settings
from grantkeeper.grants import token_aad
from grantkeeper.store.db import create_engine
from grantkeeper.store.tables import audit_events, grants

# ---------------------------------------------------------------- helpers


def _redirect_params(connect_url: str) -> dict[str, str]:
    r = httpx.get(connect_url, follow_redirects=False)
    assert r.status_code == 302, r.text
    return {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}


def stored_tokens(server: Server) -> set[str]:
    """Every token grantkeeper currently holds, decrypted with the test's master key."""
    vault = db_vault(server.db.url, server.env["GRANTKEEPER_MASTER_KEYS"])

    async def go() -> set[str]:
        engine = create_engine(
            Settings(database_url=server.db.url, master_keys=SecretStr(master_key()))
        )
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(grants))).mappings().all()
        finally:
            await engine.dispose()
        out: set[str] = set()
        for row in rows:
            for f in ("access_token", "refresh_token", "id_token"):
                blob = row[f"{f}_ct"]
                if blob is not None:
                    aad = token_aad(row["environment_id"], row["id"], f, row["version"])
                    out.add(vault.open_str(blob, aad))
        return out

    return asyncio.run(go())


def audit_rows(server: Server) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        engine = create_engine(
            Settings(database_url=server.db.url, master_keys=SecretStr(master_key()))
        )
        try:
            async with engine.connect() as conn:
                res = await conn.execute(select(audit_events))
                return [dict(m) for m in res.mappings().all()]
        finally:
            await engine.dispose()

    return asyncio.run(go())


@dataclass
class Exercise:
    """Secrets that went through one run of every flow, and everything the API answered."""

    secrets: set[str] = field(default_factory=set)
    #: provider tokens (access, refresh, ID) that grantkeeper held at some point
    tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    responses: list[httpx.Response] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def _refresh_tokens(server: Server) -> set[str]:
    """Stored refresh tokens (opaque, unlike the JWT access and ID tokens)."""
    vault = db_vault(server.db.url, server.env["GRANTKEEPER_MASTER_KEYS"])

    async def go() -> set[str]:
        engine = create_engine(
            Settings(database_url=server.db.url, master_keys=SecretStr(master_key()))
        )
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(grants))).mappings().all()
        finally:
            await engine.dispose()
        return {
            vault.open_str(
                r["refresh_token_ct"],
                token_aad(r["environment_id"], r["id"], "refresh_token", r["version"]),
            )
            for r in rows
            if r["refresh_token_ct"] is not None
        }

    return asyncio.run(go())


def exercise(gk: Server, oidc: OidcServer, fake_as: FakeAS) -> Exercise:
    """Connect, mint, force refreshes, proxy, fail imports against an AS that echoes the
    token, revoke: collecting every secret that passed through grantkeeper."""
    ex = Exercise()

    def hook(r: httpx.Response) -> None:
        r.read()
        ex.responses.append(r)

    integ = setup_oidc_integration(gk, oidc)
    ex.secrets |= {integ.client_secret, gk.admin_key, gk.admin_key.split("_", 2)[2]}  # gk_<id>_<secret>; the secret may hold "_"
    # the dance, by hand, so code and state are known
    session = start_connect(gk, "acme", "u-secrets")
    ex.secrets.add(session["connect_url"].rsplit("/", 1)[1])
    outcome = authorize(session["connect_url"], follow_origins=[oidc.origin])
    assert outcome.final_url is not None and outcome.code and outcome.state
    ex.secrets |= {outcome.code, outcome.state}
    ex.urls.append(outcome.final_url)
    cb = httpx.get(outcome.final_url, follow_redirects=False)
    assert cb.status_code == 302 and "status=success" in cb.headers["location"], cb.text
    ex.urls.append(cb.headers["location"])
    gid = parse_qs(urlsplit(cb.headers["location"]).query)["grant_id"][0]
    ex.tokens |= stored_tokens(gk)
    ex.refresh_tokens |= _refresh_tokens(gk)
    with gk.client(event_hooks={"response": [hook]}) as c:
        for force in (False, True, True):
            r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": force})
            assert r.status_code == 200, r.text
            ex.tokens.add(r.json()["access_token"])
            ex.tokens |= stored_tokens(gk)
            ex.refresh_tokens |= _refresh_tokens(gk)
        p = c.get(f"/v1/proxy/{gid}/echo/x", params={"q": "1"})
        assert p.status_code in (200, 404), p.text
        for path in ("/v1/grants", f"/v1/grants/{gid}", "/v1/audit-events", "/v1/integrations"):
            assert c.get(path).status_code == 200
        assert c.get(f"/v1/connect/sessions/{session['id']}").status_code == 200
        # an authorization server that echoes the refresh token in its errors
        assert c.put("/v1/integrations/echo", json=fake_as.integration()).status_code in (200, 201)
        echoed = "rt-echo-5b3c9a1e77"
        ex.secrets |= {echoed, "fake-client-secret-8f1c2e"}
        fake_as.answers += [
            (400, {"error": "invalid_grant", "error_description": f"refresh token {echoed} is revoked"}),
            (500, {"error": "server_error", "error_description": f"failed for {echoed}"}),
        ]
        for _ in range(2):
            r = c.post(
                "/v1/grants",
                json={"integration_id": "echo", "user_id": "u-echo", "refresh_token": echoed, "verify": True},
            )
            assert r.status_code in (422, 502, 503), r.text
        # a key in the query string is refused, and must not be logged either
        assert httpx.get(
            gk.base_url + "/v1/grants", params={"api_key": gk.admin_key}
        ).status_code == 401
        ex.tokens |= stored_tokens(gk)
        assert c.delete(f"/v1/grants/{gid}").status_code == 200
    ex.secrets |= ex.tokens
    return ex


def _outputs(server: Server) -> str:
    out = server.log_text()
    stdout = server.log_path.with_suffix(".stdout")
    if stdout.exists():
        # the first-start banner prints the admin key once, by design (CONTRACT.md)
        out += re.sub(r"GRANTKEEPER_ADMIN_KEY=\S+", "", stdout.read_text(errors="replace"))
    return out


# ---------------------------------------------------------------- C1


@pytest.mark.oidc
def test_rejected_callbacks_make_no_token_request_grant_or_webhook(
    gk: Server, oidc: OidcServer, webhook_sink: WebhookSink
) -> None:
    """C1: missing, unknown, tampered, replayed states and another environment's session:
    400, no token request at the AS, no grant, and no webhook."""
    setup_oidc_integration(gk, oidc)
    with gk.client() as c:
        assert c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.created", "grant.updated"]}).status_code == 201
    # a second environment with its own key and integration
    gk.cli("environments", "create", "other")
    other_key = json.loads(
        gk.cli("api-keys", "create", "--name", "o", "--scope", "admin", "--environment", "other", "--json").stdout
    )["key"]
    other = Server(gk.base_url, other_key, gk.env, gk.proc, gk.log_path, gk.db)
    setup_oidc_integration(other, oidc, "acme")
    s_default = start_connect(gk, "acme", "u-c1")
    s_other = start_connect(other, "acme", "u-c1")
    out_default = authorize(s_default["connect_url"], follow_origins=[oidc.origin])
    p_other = _redirect_params(s_other["connect_url"])
    before = int(oidc.stats()["token"]["total"])
    cb = gk.base_url + "/oauth/callback"
    code = out_default.query["code"]
    tampered = out_default.query["state"][:-2] + ("AA" if not out_default.query["state"].endswith("AA") else "BB")
    for params in (
        {"code": code},
        {"code": code, "state": "unknown"},
        {"code": code, "state": tampered, "iss": oidc.issuer},
    ):
        r = httpx.get(cb, params=params, follow_redirects=False)
        assert r.status_code == 400, (params, r.status_code)
    # the default environment's code with the other environment's state: not a valid pair
    mixed = httpx.get(cb, params={"code": code, "state": p_other["state"], "iss": oidc.issuer}, follow_redirects=False)
    assert mixed.status_code in (302, 400)
    if mixed.status_code == 302:
        assert "status=error" in mixed.headers["location"]
    assert int(oidc.stats()["token"]["total"]) - before <= 1  # at most the mixed pair's failed exchange
    with gk.client() as c:
        assert c.get("/v1/grants").json()["data"] == []
    with other.client() as c:
        assert c.get("/v1/grants").json()["data"] == []
    # the genuine callback still works once, then its replay is refused
    ok = httpx.get(out_default.final_url or "", follow_redirects=False)
    assert ok.status_code == 302 and "status=success" in ok.headers["location"]
    before = int(oidc.stats()["token"]["total"])
    assert httpx.get(out_default.final_url or "", follow_redirects=False).status_code == 400
    assert int(oidc.stats()["token"]["total"]) == before
    webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.created")
    time.sleep(1.5)  # the worker would have delivered anything else by now
    assert [w.json()["type"] for w in webhook_sink.received] == ["grant.created"]


# ---------------------------------------------------------------- C2


@pytest.mark.oidc
def test_pkce_is_s256_with_a_fresh_verifier_per_flow(gk: Server, oidc: OidcServer) -> None:
    """C2: two flows -> S256, different challenges, never plain; the challenge is a SHA-256."""
    setup_oidc_integration(gk, oidc)
    params = [_redirect_params(start_connect(gk, "acme", f"u-pkce{i}")["connect_url"]) for i in range(3)]
    for p in params:
        assert p["code_challenge_method"] == "S256"
        raw = base64.urlsafe_b64decode(p["code_challenge"] + "=" * (-len(p["code_challenge"]) % 4))
        assert len(raw) == hashlib.sha256().digest_size
        assert len(p["state"]) >= 22 and len(p["nonce"]) >= 22
    assert len({p["code_challenge"] for p in params}) == 3
    assert len({p["state"] for p in params}) == 3
    assert len({p["nonce"] for p in params}) == 3
    # the verifier the provider checks is 43-128 characters: a completed flow proves S256 works
    connect_grant(gk, oidc, "acme", "u-pkce-done")


# ---------------------------------------------------------------- C6


@pytest.mark.oidc
def test_callback_pages_send_no_referrer_and_load_nothing_third_party(gk: Server, oidc: OidcServer) -> None:
    """C6: the callback (error page and success redirect) sends Referrer-Policy: no-referrer,
    loads no third-party content, and the code/state never reach the log."""
    setup_oidc_integration(gk, oidc)
    s = start_connect(gk, "acme", "u-c6")
    outcome = authorize(s["connect_url"], follow_origins=[oidc.origin])
    assert outcome.final_url is not None
    pages = [
        httpx.get(gk.base_url + "/oauth/callback", params={"code": "c0de-c6", "state": "st4te-c6"}),
        httpx.get(gk.base_url + "/oauth/callback", params={"error": "access_denied", "error_description": "<img src=https://evil.tld/x>"}),
    ]
    success = httpx.get(outcome.final_url, follow_redirects=False)
    assert success.status_code == 302
    for r in [*pages, success]:
        assert r.headers.get("referrer-policy") == "no-referrer", r.headers
        assert "no-store" in r.headers.get("cache-control", "")
    for r in pages:
        assert r.status_code == 400 and "text/html" in r.headers["content-type"]
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        html = r.text
        assert "<img src=https://evil.tld" not in html
        for m in re.finditer(r"""(?:src|href|action)\s*=\s*["']?([^"' >]+)""", html, re.I):
            url = m.group(1)
            assert url.startswith("/") and not url.startswith("//"), f"third-party reference {url!r}"
    log = gk.log_text()
    for secret in ("c0de-c6", "st4te-c6", outcome.code or "", outcome.state or ""):
        assert secret and secret not in log


# ---------------------------------------------------------------- C7


@pytest.mark.oidc
def test_api_never_returns_refresh_tokens_or_puts_tokens_in_urls(
    gk: Server, oidc: OidcServer, fake_as: FakeAS
) -> None:
    """C7: every API response is searched for every refresh token the provider issued;
    token responses carry Cache-Control: no-store; no token travels in a URL."""
    ex = exercise(gk, oidc, fake_as)
    assert len(ex.refresh_tokens) >= 3  # rotated on every refresh
    for r in ex.responses:
        blob = r.text + json.dumps(dict(r.headers))
        for rt in ex.refresh_tokens:
            assert rt not in blob, (r.request.method, r.request.url.path)
        if '"access_token"' in r.text and not r.request.url.path.startswith("/v1/proxy/"):
            assert r.headers.get("cache-control") == "no-store", (r.request.url.path, r.text[:200])
        assert str(r.request.url).count("token=") == 0
    assert ex.urls
    for url in ex.urls:
        for t in ex.tokens:
            assert t not in url


# ---------------------------------------------------------------- C9


@pytest.mark.oidc
def test_no_secret_in_any_log_output_at_debug(gk: Server, oidc: OidcServer, fake_as: FakeAS) -> None:
    """C9: at DEBUG, after every flow (including an AS that echoes the refresh token in its
    errors), the server's whole output holds no token, code, state, client secret or key."""
    assert gk.env["GRANTKEEPER_LOG_LEVEL"] == "DEBUG"
    ex = exercise(gk, oidc, fake_as)
    out = _outputs(gk)
    assert "DEBUG" in out  # the run really logged at DEBUG
    leaked = sorted(s[:12] + "…" for s in ex.secrets if s and s in out)
    assert not leaked, f"secrets in the server output: {leaked}"


# ---------------------------------------------------------------- C14 (payloads)


@pytest.mark.oidc
def test_webhook_payloads_carry_no_tokens(
    gk: Server, oidc: OidcServer, webhook_sink: WebhookSink, fake_as: FakeAS
) -> None:
    """C14: deliveries are signed, have an id and timestamp, and hold no token or secret."""
    from standardwebhooks.webhooks import Webhook

    with gk.client() as c:
        ep = c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.created", "grant.updated", "grant.deleted"]}).json()
    ex = exercise(gk, oidc, fake_as)
    got = webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.deleted")
    assert got
    for w in webhook_sink.received:
        Webhook(ep["secret"]).verify(w.body, w.headers)
        assert w.headers["webhook-id"] and w.headers["webhook-timestamp"]
        text = w.body.decode()
        for s in ex.secrets:
            assert s not in text


# ---------------------------------------------------------------- C15


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def test_token_exchange_takes_the_subject_from_the_subject_token_only(gk: Server) -> None:
    """C15: the one token-exchange endpoint (RFC 8693) is ``POST /oauth/token``; a caller
    cannot name the subject in the body (no ``sub`` / ``user_id`` beside the subject token),
    and the per-grant token endpoint takes no grant_type. Exchange itself, downscoping and
    the subject's own grants only: tests/integration/test_token_exchange.py."""
    exchange = {"grant_type": TOKEN_EXCHANGE, "subject_token": "x", "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "audience": "acme"}
    with gk.client() as c:
        for path in ("/v1/token-exchange", "/v1/token", "/token", "/v1/oauth/token", "/v1/sts/token"):
            r = c.post(path, data=exchange)
            assert r.status_code in (404, 405, 415), (path, r.status_code)
        for extra in ({"sub": "someone-else"}, {"user_id": "someone-else"}, {"subject": "someone-else"}):
            r = c.post("/oauth/token", data={**exchange, **extra})
            assert r.status_code == 400, (extra, r.status_code)
            assert r.json()["error"] == "invalid_request"
        spec = c.get("/openapi.json").json()
        assert [p for p in spec["paths"] if "exchange" in p or p.endswith("/token") and "{grant_id}" not in p] == ["/oauth/token"]
        r = c.post(
            "/v1/grants/00000000-0000-4000-8000-000000000000/token",
            json={"grant_type": TOKEN_EXCHANGE, "subject_token": "x"},
        )
        assert r.status_code == 422
