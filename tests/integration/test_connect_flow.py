"""The OAuth dance against the real oidc-provider, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from tests.support.flows import (
    RETURN_URL,
    connect,
    connect_grant,
    setup_oidc_integration,
    start_connect,
)
from tests.support.gk import Server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc


def test_full_flow_yields_active_grant_with_refresh_token(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    outcome = connect(gk, oidc, "acme", "user-1")
    assert outcome.final_url is not None and outcome.final_url.startswith(RETURN_URL + "/x?")
    q = outcome.query
    assert q["status"] == "success" and q["grant_id"] and q["connect_session_id"]
    with gk.client() as c:
        g = c.get(f"/v1/grants/{q['grant_id']}").json()
        assert g["status"] == "active"
        assert g["has_refresh_token"] is True
        assert g["provider_account_id"] == "alice"
        assert g["user_id"] == "user-1"
        assert "offline_access" in g["scopes"] and "api:read" in g["scopes"]
        s = c.get(f"/v1/connect/sessions/{q['connect_session_id']}").json()
        assert s["status"] == "completed" and s["grant_id"] == q["grant_id"]
        tok = c.post(f"/v1/grants/{q['grant_id']}/token", json={"min_ttl": 0})
        assert tok.status_code == 200, tok.text
        assert tok.headers["cache-control"] == "no-store"
        body = tok.json()
        assert set(body) == {"access_token", "token_type", "expires_at", "expires_in", "scopes", "grant_id"}
    # the token works at the provider's API
    r = oidc.http.get(oidc.api_base_url + "/echo/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 200 and r.json()["account"] == "alice"


def test_authorization_request_carries_state_pkce_nonce_and_consent(gk: Server, oidc: OidcServer) -> None:
    from urllib.parse import parse_qs, urlsplit

    import httpx

    setup_oidc_integration(gk, oidc)
    challenges = set()
    for _ in range(2):
        s = start_connect(gk, "acme", "user-2")
        r = httpx.get(s["connect_url"], follow_redirects=False)
        assert r.status_code == 302
        q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}
        assert q["code_challenge_method"] == "S256"
        assert len(q["code_challenge"]) == 43
        assert len(q["state"]) >= 43 and q["nonce"]
        assert q["prompt"] == "consent"  # no working refresh token held yet
        assert "offline_access" in q["scope"].split()
        challenges.add(q["code_challenge"])
    assert len(challenges) == 2


def test_reconnect_keeps_grant_id_and_skips_consent(gk: Server, oidc: OidcServer) -> None:
    from urllib.parse import parse_qs, urlsplit

    import httpx

    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-3")
    with gk.client() as c:
        rc = c.post(f"/v1/grants/{gid}/reconnect", json={"return_to": RETURN_URL + "/again"})
        assert rc.status_code == 201, rc.text
    r = httpx.get(rc.json()["connect_url"], follow_redirects=False)
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}
    assert "prompt" not in q  # a working refresh token is held: no forced consent screen
    gid2 = connect_grant(gk, oidc, "acme", "user-3")
    assert gid2 == gid
    with gk.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["has_refresh_token"] is True  # no refresh token in the reply keeps the stored one
        listed = c.get("/v1/grants", params={"user_id": "user-3"}).json()
        assert [x["id"] for x in listed["data"]] == [gid]


def test_user_denies(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    oidc.set_account("alice", deny=True)
    s = start_connect(gk, "acme", "user-4")
    outcome = oidc.authorize(s["connect_url"], stop_origin=gk.base_url)
    assert outcome.query["status"] == "error"
    assert outcome.query["error"] == "access_denied"
    with gk.client() as c:
        assert c.get(f"/v1/connect/sessions/{s['id']}").json()["status"] == "failed"
        assert c.get("/v1/grants", params={"user_id": "user-4"}).json()["data"] == []
