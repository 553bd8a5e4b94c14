"""Integration inputs that used to slip through: reserved authorization parameters and long
URLs (a PostgreSQL-only 500 from String(1000) columns)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from tests.support.gk import Server
from tests.support.sqlexec import sql_exec

RETURN = "http://127.0.0.1:9/app"


def _body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "provider": "oauth2",
        "client_id": "cid",
        "client_secret": "csecret",
        "scopes": ["read"],
        "return_urls": [RETURN],
        "endpoints": {
            "authorization_url": "http://127.0.0.1:9/authorize",
            "token_url": "http://127.0.0.1:9/token",
        },
    }
    body.update(extra)
    return body


RESERVED = [
    "state",
    "redirect_uri",
    "client_id",
    "response_type",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "scope",
    "request",
    "request_uri",
    "response_mode",
    "State",
]


def test_reserved_authorization_params_are_refused(gk: Server) -> None:
    with gk.client() as c:
        for name in RESERVED:
            r = c.put("/v1/integrations/crm", json=_body(authorization_params={name: "x"}))
            assert r.status_code == 422, (name, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert name in r.text
        # harmless extras are still fine
        r = c.put("/v1/integrations/crm", json=_body(authorization_params={"login_hint": "a", "access_type": "offline"}))
        assert r.status_code == 201, r.text


def test_protocol_params_win_over_stored_authorization_params(gk: Server) -> None:
    """A row written before the check (or by hand) still cannot override the protocol."""
    with gk.client() as c:
        assert c.put("/v1/integrations/crm", json=_body(authorization_params={"login_hint": "a"})).status_code == 201
    hostile = (
        '{"redirect_uri": "https://evil.example/cb", "state": "fixed", "client_id": "other", '
        '"response_type": "token", "code_challenge_method": "plain", "scope": "admin", "login_hint": "a"}'
    )
    sql_exec(gk.db, "UPDATE integrations SET authorization_params = ? WHERE id = 'crm'", hostile)
    with gk.client() as c:
        r = c.post("/v1/connect/sessions", json={"integration_id": "crm", "user_id": "u1", "return_to": RETURN + "/x"})
        assert r.status_code == 201, r.text
        url = r.json()["connect_url"]
    r = httpx.get(url, follow_redirects=False)
    assert r.status_code == 302, r.text
    pairs = parse_qsl(urlsplit(r.headers["location"]).query)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), pairs  # every parameter once
    q = dict(pairs)
    assert q["redirect_uri"] == gk.base_url + "/oauth/callback"
    assert q["client_id"] == "cid" and q["response_type"] == "code"
    assert q["state"] != "fixed" and q["code_challenge_method"] == "S256"
    assert q["scope"] == "read" and q["login_hint"] == "a"


def test_long_urls_are_stored_not_500(gk: Server) -> None:
    long_path = "/" + "p" * 1500
    body = _body(api_base_url="http://127.0.0.1:9" + long_path)
    body["endpoints"]["revocation_url"] = "http://127.0.0.1:9" + long_path
    with gk.client() as c:
        r = c.put("/v1/integrations/crm", json=body)
        assert r.status_code == 201, r.text
        assert c.get("/v1/integrations/crm").json()["api_base_url"].endswith(long_path)
        r = c.put("/v1/integrations/oid", json={**_body(), "provider": "oidc", "issuer": "http://127.0.0.1:9" + long_path, "endpoints": None})
        assert r.status_code < 500, r.text
        # over the API's limit: a clear 422, never a 500
        too_long = _body(api_base_url="http://127.0.0.1:9/" + "p" * 5000)
        r = c.put("/v1/integrations/crm", json=too_long)
        assert r.status_code == 422, r.text
        r = c.post("/v1/connect/sessions", json={"integration_id": "crm", "user_id": "u1", "return_to": RETURN + "/" + "x" * 1900})
        assert r.status_code in (201, 422), r.text
