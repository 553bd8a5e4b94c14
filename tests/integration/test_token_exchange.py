"""End-user access against a live grantkeeper and the real oidc-provider, on SQLite and PostgreSQL.

A JWT from the app's own issuer (``AppIssuer``: keys served as JWKS on loopback) is
exchanged (RFC 8693, ``POST /oauth/token``) for that user's provider access token, which
then works at the provider's userinfo endpoint. The negative cases: another user's
grant, another environment, an integration without ``client_access``, a scope beyond
the grant, bad JWTs, foreign origins, revoked end-user tokens; and no refresh token
anywhere in responses, logs or audit.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from tests.support.flows import setup_oidc_integration, start_connect
from tests.support.gk import Server
from tests.support.oidc import OidcServer
from tests.support.subjects import AppIssuer

pytestmark = pytest.mark.oidc

JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def trust(gk: Server, issuer: AppIssuer, issuer_id: str = "app", key: str | None = None, **overrides: Any) -> dict[str, Any]:
    with gk.client(key) as c:
        r = c.put(f"/v1/subject-issuers/{issuer_id}", json=issuer.trust_body(**overrides))
        assert r.status_code in (200, 201), r.text
        data: dict[str, Any] = r.json()
        return data


def connect_exported(gk: Server, oidc: OidcServer, integration_id: str, user_id: str, account: str) -> tuple[str, str]:
    """Connect ``user_id`` (provider account ``account``); returns (grant id, the refresh token)."""
    oidc.set_account(account)
    session = start_connect(gk, integration_id, user_id)
    outcome = oidc.authorize(session["connect_url"], stop_origin=gk.base_url)
    assert outcome.query.get("status") == "success", outcome.responses
    with gk.client() as c:
        r = c.post(f"/v1/connect/sessions/{session['id']}/tokens")
        assert r.status_code == 200, r.text
        return outcome.query["grant_id"], r.json()["refresh_token"]


def exchange(gk: Server, subject: str, audience: str = "acme", *, origin: str | None = None, key: str | None = None,
             subject_type: str = JWT, **extra: str) -> httpx.Response:
    headers = {}
    if origin is not None:
        headers["Origin"] = origin
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": subject_type, "audience": audience, **extra}
    return httpx.post(gk.base_url + "/oauth/token", data=form, headers=headers, timeout=30)


def api_key(gk: Server, *scopes: str, environment: str = "default", integrations: tuple[str, ...] = ()) -> str:
    args = ["api-keys", "create", "--name", "t", "--environment", environment, "--json"]
    for s in scopes:
        args += ["--scope", s]
    for i in integrations:
        args += ["--integration", i]
    key: str = json.loads(gk.cli(*args).stdout)["key"]
    return key


@pytest.fixture
def world(gk: Server, oidc: OidcServer, app_issuer: AppIssuer) -> dict[str, Any]:
    """acme (client_access) with grants for u1 (alice) and u2 (bob); plain (no client_access) for u1."""
    oidc.set_ttl(AccessToken=3600)
    setup_oidc_integration(gk, oidc, "acme", client_access=True, token_export="once")
    setup_oidc_integration(gk, oidc, "plain", token_export="once")
    g1, rt1 = connect_exported(gk, oidc, "acme", "u1", "alice")
    g2, rt2 = connect_exported(gk, oidc, "acme", "u2", "bob")
    g3, rt3 = connect_exported(gk, oidc, "plain", "u1", "alice")
    trust(gk, app_issuer)
    return {"grants": {"u1": g1, "u2": g2, "plain": g3}, "refresh_tokens": [rt1, rt2, rt3]}


def test_browser_exchange_gives_the_users_own_token_that_works_at_userinfo(
    gk: Server, oidc: OidcServer, app_issuer: AppIssuer, world: dict[str, Any]
) -> None:
    r = exchange(gk, app_issuer.sign("u1"), origin=app_issuer.origin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    assert body["issued_token_type"] == ACCESS and body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 3600
    assert set(body["scope"].split()) == {"openid", "offline_access", "api:read"}
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["access-control-allow-origin"] == app_issuer.origin
    assert "origin" in r.headers["vary"].lower()
    assert "access-control-allow-credentials" not in r.headers
    info = httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200 and info.json()["sub"] == "alice"
    # u2's JWT gets bob's token, not alice's
    r2 = exchange(gk, app_issuer.sign("u2"), origin=app_issuer.origin)
    info2 = httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {r2.json()['access_token']}"})
    assert info2.json()["sub"] == "bob"
    # the same with ES256 and EdDSA keys, and through the backend mode with an API key
    for alg in ("ES256", "EdDSA"):
        assert exchange(gk, app_issuer.sign("u1", alg=alg), origin=app_issuer.origin).status_code == 200
    key = api_key(gk, "credentials:read")
    assert exchange(gk, app_issuer.sign("u1"), key=key).status_code == 200
    # audited with the end user as actor; nothing anywhere holds a refresh token
    with gk.client() as c:
        events = c.get("/v1/audit-events", params={"grant_id": world["grants"]["u1"], "limit": 200}).json()["data"]
    issued = [e for e in events if e["action"] == "token.issued"]
    assert issued and all(e["actor"] == "user:u1" for e in issued)
    haystack = r.text + r2.text + json.dumps(events) + gk.log_text() + (gk.log_path.with_suffix(".stdout").read_text())
    for refresh_token in world["refresh_tokens"]:
        assert refresh_token not in haystack
    assert "refresh_token" not in r.text


def test_a_subject_reaches_only_its_own_grants(
    gk: Server, oidc: OidcServer, app_issuer: AppIssuer, world: dict[str, Any]
) -> None:
    origin = app_issuer.origin
    # a user without a grant of acme gets nothing (not somebody else's)
    r = exchange(gk, app_issuer.sign("u3"), origin=origin)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
    # an integration without client_access: not from a browser, but a backend may
    r = exchange(gk, app_issuer.sign("u1"), "plain", origin=origin)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_target")
    assert exchange(gk, app_issuer.sign("u1"), "plain", key=api_key(gk, "credentials:read")).status_code == 200
    # a key limited to other integrations cannot reach acme
    limited = api_key(gk, "credentials:read", integrations=("plain",))
    assert exchange(gk, app_issuer.sign("u1"), key=limited).json()["error"] == "invalid_target"
    # unknown integration
    assert exchange(gk, app_issuer.sign("u1"), "nope", origin=origin).json()["error"] == "invalid_target"
    # scope: a subset is fine, anything beyond the grant is invalid_scope
    assert exchange(gk, app_issuer.sign("u1"), origin=origin, scope="api:read").status_code == 200
    r = exchange(gk, app_issuer.sign("u1"), origin=origin, scope="api:read email")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_scope")
    # login_hint picks the account; an unknown one finds nothing
    assert exchange(gk, app_issuer.sign("u1"), origin=origin, login_hint="alice").status_code == 200
    assert exchange(gk, app_issuer.sign("u1"), origin=origin, login_hint="bob").json()["error"] == "invalid_grant"
    # another environment: its key cannot use this environment's issuer or grants
    gk.cli("environments", "create", "other")
    other = api_key(gk, "credentials:read", "admin", environment="other")
    r = exchange(gk, app_issuer.sign("u1"), key=other)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
    # ... even when it trusts an issuer of its own and has an integration of the same id
    with gk.client(other) as c:
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body()).status_code == 409
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body(audience="other-aud")).status_code == 201
    setup_oidc_integration(Server(gk.base_url, other, gk.env, gk.proc, gk.log_path, gk.db), oidc, "acme", client_access=True)
    r = exchange(gk, app_issuer.sign("u1", aud="other-aud"), origin=origin)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")  # u1 has no grant there
    # a wrong API key is invalid_client (401), a key without credentials:read unauthorized_client
    r = exchange(gk, app_issuer.sign("u1"), key="gk_nope_nope")
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert exchange(gk, app_issuer.sign("u1"), key=api_key(gk, "grants:read")).json()["error"] == "unauthorized_client"
    # no API key and no Origin: a backend must authenticate
    r = exchange(gk, app_issuer.sign("u1"))
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_bad_subject_tokens_are_invalid_grant(
    gk: Server, oidc: OidcServer, app_issuer: AppIssuer, world: dict[str, Any]
) -> None:
    import base64
    import hashlib
    import hmac
    import time

    from joserfc.jwk import RSAKey

    now = int(time.time())
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    alg_none = b64({"alg": "none", "typ": "JWT"}) + "." + b64(app_issuer.claims("u1")) + "."
    # the classic confusion: HS256 "signed" with the issuer's public key as the secret
    rsa_public_pem = app_issuer.keys["RS256"].as_pem(private=False)
    signing_input = b64({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}) + "." + b64(app_issuer.claims("u1"))
    mac = hmac.new(rsa_public_pem, signing_input.encode(), hashlib.sha256).digest()
    hmac_with_public = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    bad = {
        "expired": app_issuer.sign("u1", exp=now - 120, iat=now - 400, nbf=now - 400),
        "not yet valid": app_issuer.sign("u1", nbf=now + 600),
        "issued in the future": app_issuer.sign("u1", iat=now + 600, nbf=None),
        "too old": app_issuer.sign("u1", iat=now - 7200, nbf=None, exp=now + 300),
        "no exp": app_issuer.sign("u1", exp=None),
        "wrongly signed": app_issuer.sign("u1", key=stranger),
        "alg none": alg_none,
        "hmac with the public key": hmac_with_public,
        "wrong aud": app_issuer.sign("u1", aud="someone-else"),
        "wrong iss": app_issuer.sign("u1", iss="http://127.0.0.1:9/evil"),
        "unknown kid": app_issuer.sign("u1", kid="nope"),
        "no subject": app_issuer.sign("u1", sub=None),
        "garbage": "not.a.jwt",
        "an api key": gk.admin_key,
    }
    for why, token in bad.items():
        r = exchange(gk, token, origin=app_issuer.origin)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant"), why
        assert r.headers["access-control-allow-origin"] == app_issuer.origin  # the app can read why
        me = httpx.get(gk.base_url + "/v1/me/grants", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401, why
    # and the good one still works
    assert exchange(gk, app_issuer.sign("u1"), origin=app_issuer.origin).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cors_only_for_allowed_origins(gk: Server, oidc: OidcServer, app_issuer: AppIssuer, world: dict[str, Any]) -> None:
    evil = "http://127.0.0.1:9"
    for path, method in (("/oauth/token", "POST"), ("/v1/me/grants", "GET"), ("/v1/me/connect-sessions", "POST")):
        ok = httpx.options(gk.base_url + path, headers={"Origin": app_issuer.origin, "Access-Control-Request-Method": method,
                                                         "Access-Control-Request-Headers": "authorization, content-type"})
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == app_issuer.origin
        assert method in ok.headers["access-control-allow-methods"]
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in ok.headers
        no = httpx.options(gk.base_url + path, headers={"Origin": evil, "Access-Control-Request-Method": method})
        assert not any(h.startswith("access-control-") for h in no.headers)
    r = exchange(gk, app_issuer.sign("u1"), origin=evil)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    assert not any(h.startswith("access-control-") for h in r.headers)
    me = httpx.get(gk.base_url + "/v1/me/grants", headers={"Authorization": f"Bearer {app_issuer.sign('u1')}", "Origin": evil})
    assert me.status_code == 200 and not any(h.startswith("access-control-") for h in me.headers)
    me = httpx.get(gk.base_url + "/v1/me/grants", headers={"Authorization": f"Bearer {app_issuer.sign('u1')}", "Origin": app_issuer.origin})
    assert me.headers["access-control-allow-origin"] == app_issuer.origin
    # the rest of the API is not for browsers at all
    with gk.client() as c:
        assert "access-control-allow-origin" not in c.get("/v1/grants", headers={"Origin": app_issuer.origin}).headers
    # the SDK is a public, cacheable module
    sdk = httpx.get(gk.base_url + "/sdk/grantkeeper.js")
    assert sdk.status_code == 200
    assert sdk.headers["content-type"] == "text/javascript; charset=utf-8"
    assert sdk.headers["access-control-allow-origin"] == "*"
    assert "max-age" in sdk.headers["cache-control"] and sdk.headers["etag"]
    assert "export class GrantKeeper" in sdk.text
    assert httpx.get(gk.base_url + "/sdk/grantkeeper.js", headers={"If-None-Match": sdk.headers["etag"]}).status_code == 304


def test_end_user_tokens_and_self_service(gk: Server, oidc: OidcServer, app_issuer: AppIssuer, world: dict[str, Any]) -> None:
    with gk.client() as c:
        assert c.post("/v1/end-user-tokens", json={"user_id": "u1", "ttl": 3601}).status_code == 422
        r = c.post("/v1/end-user-tokens", json={"user_id": "u1", "ttl": 600})
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        minted = r.json()
        bound = c.post("/v1/end-user-tokens", json={"user_id": "u1", "integration_ids": ["plain"]}).json()
    token = minted["token"]
    assert token.startswith("gkut_") and minted["expires_at"]
    r = exchange(gk, token, origin=app_issuer.origin, subject_type=ACCESS)
    assert r.status_code == 200, r.text
    assert httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {r.json()['access_token']}"}).json()["sub"] == "alice"
    # a token bound to "plain" cannot reach acme; the JWT type does not accept it
    assert exchange(gk, bound["token"], origin=app_issuer.origin, subject_type=ACCESS).json()["error"] == "invalid_target"
    assert exchange(gk, token, origin=app_issuer.origin).json()["error"] == "invalid_grant"
    auth = {"Authorization": f"Bearer {token}"}
    mine = httpx.get(gk.base_url + "/v1/me/grants", headers=auth).json()["data"]
    assert {g["id"] for g in mine} == {world["grants"]["u1"], world["grants"]["plain"]}
    assert all(g["user_id"] == "u1" and "access_token" not in g for g in mine)
    # another user's grant: 404, untouched
    assert httpx.delete(gk.base_url + f"/v1/me/grants/{world['grants']['u2']}", headers=auth).status_code == 404
    # the stored token is a hash only: the secret part is in no table
    # (checked through the API: the token's id is visible in audit, its secret nowhere)
    with gk.client() as c:
        audit = c.get("/v1/audit-events", params={"limit": 200}).json()["data"]
    assert token not in json.dumps(audit) and token.split("_")[-1] not in gk.log_text()
    # revoked: stops working at once, for the exchange and for /v1/me
    with gk.client() as c:
        assert c.delete(f"/v1/end-user-tokens/{minted['id']}").status_code == 200
        assert c.delete("/v1/end-user-tokens/unknown").status_code == 404
    assert exchange(gk, token, origin=app_issuer.origin, subject_type=ACCESS).json()["error"] == "invalid_grant"
    assert httpx.get(gk.base_url + "/v1/me/grants", headers=auth).status_code == 401


def test_self_service_connect_and_disconnect(gk: Server, oidc: OidcServer, app_issuer: AppIssuer) -> None:
    setup_oidc_integration(gk, oidc, "acme", client_access=True)
    trust(gk, app_issuer)
    auth = {"Authorization": f"Bearer {app_issuer.sign('u9')}"}
    r = httpx.post(gk.base_url + "/v1/me/connect-sessions", headers=auth,
                   json={"integration_id": "acme", "return_to": "http://evil.example/x"})
    assert r.status_code == 422 and r.json()["code"] == "return_to_not_allowed"
    r = httpx.post(gk.base_url + "/v1/me/connect-sessions", headers=auth,
                   json={"integration_id": "acme", "return_to": "http://127.0.0.1:9/app/done/me"})
    assert r.status_code == 201, r.text
    oidc.set_account("carol")
    outcome = oidc.authorize(r.json()["connect_url"], stop_origin=gk.base_url)
    assert outcome.query.get("status") == "success"
    grant_id = outcome.query["grant_id"]
    mine = httpx.get(gk.base_url + "/v1/me/grants", headers=auth).json()["data"]
    assert [g["id"] for g in mine] == [grant_id] and mine[0]["user_id"] == "u9"
    token = exchange(gk, app_issuer.sign("u9"), origin=app_issuer.origin).json()["access_token"]
    assert httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {token}"}).json()["sub"] == "carol"
    r = httpx.delete(gk.base_url + f"/v1/me/grants/{grant_id}", headers=auth)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("id", "status", "provider_revocation")} == {
        "id": grant_id, "status": "revoked", "provider_revocation": "succeeded"}
    assert httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert httpx.get(gk.base_url + "/v1/me/grants", headers=auth).json()["data"] == []
    assert exchange(gk, app_issuer.sign("u9"), origin=app_issuer.origin).json()["error"] == "invalid_grant"
    with gk.client() as c:
        events = c.get("/v1/audit-events", params={"grant_id": grant_id, "limit": 50}).json()["data"]
    assert any(e["action"] == "grant.deleted" and e["actor"] == "user:u9" for e in events)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_subject_issuer_admin_api_and_jwks_rotation(gk: Server, oidc: OidcServer, app_issuer: AppIssuer) -> None:
    setup_oidc_integration(gk, oidc, "acme", client_access=True)
    with gk.client() as c:
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body(allowed_origins=["*"])).status_code == 422
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body(allowed_origins=["http://a.test/path"])).status_code == 422
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body(jwks_uri="file:///etc/passwd")).status_code == 422
        assert c.put("/v1/subject-issuers/Bad!", json=app_issuer.trust_body()).status_code == 422
        r = c.put("/v1/subject-issuers/app", json=app_issuer.trust_body())
        assert r.status_code == 201 and r.json()["allowed_origins"] == [app_issuer.origin]
        assert c.put("/v1/subject-issuers/app", json=app_issuer.trust_body()).status_code == 200
        assert [i["id"] for i in c.get("/v1/subject-issuers").json()["data"]] == ["app"]
        assert c.get("/v1/subject-issuers/app").json()["jwks_uri"] == app_issuer.jwks_uri
        assert c.get("/v1/subject-issuers/nope").status_code == 404
    no_admin = api_key(gk, "connect", "credentials:read")
    with gk.client(no_admin) as c:
        assert c.get("/v1/subject-issuers").status_code == 403
    # the JWKS is cached: many verifications, one fetch
    for _ in range(3):
        assert httpx.get(gk.base_url + "/v1/me/grants", headers={"Authorization": f"Bearer {app_issuer.sign('u1')}"}).status_code == 200
    assert app_issuer.jwks_fetches == 1
    # a new key (unknown kid) makes it refetch, but at most once per refetch interval
    from joserfc.jwk import RSAKey

    new = RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "alg": "RS256"}, private=True)
    r = httpx.get(gk.base_url + "/v1/me/grants", headers={"Authorization": f"Bearer {app_issuer.sign('u1', key=new)}"})
    assert r.status_code == 401 and app_issuer.jwks_fetches == 1  # fetched moments ago: no refetch yet
    with gk.client() as c:
        assert c.delete("/v1/subject-issuers/app").status_code == 200
        assert c.delete("/v1/subject-issuers/app").status_code == 404
    assert httpx.get(gk.base_url + "/v1/me/grants", headers={"Authorization": f"Bearer {app_issuer.sign('u1')}"}).status_code == 401


def test_exchange_refreshes_first_single_flight_like_the_token_route(
    tmp_path: Any, backend: str, oidc: OidcServer, app_issuer: AppIssuer
) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.gk import running_server

    # no worker: the proactive refresh must not get there first
    with running_server(backend, tmp_path, worker=False) as gk:
        oidc.set_ttl(AccessToken=6)
        setup_oidc_integration(gk, oidc, "acme", client_access=True, token_export="once")
        grant_id, first_refresh_token = connect_exported(gk, oidc, "acme", "u1", "alice")
        trust(gk, app_issuer)
        time.sleep(4.5)  # less than half the token's life left: the vault must refresh first
        # the refreshed token lives long enough for every caller's min_ttl (v2: a token
        # shorter than min_ttl is refreshed again when the refresh budget is 0, as in tests)
        oidc.set_ttl(AccessToken=3600)
        before = oidc.stats()["token"]["refresh_token"]
        jwt = app_issuer.sign("u1")
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: exchange(gk, jwt, origin=app_issuer.origin), range(8)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert len({a.json()["access_token"] for a in answers}) == 1
        assert oidc.stats()["token"]["refresh_token"] == before + 1
        assert answers[0].json()["expires_in"] > 3
        token = answers[0].json()["access_token"]
        info = httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {token}"})
        assert info.json()["sub"] == "alice"
        with gk.client() as c:
            assert c.get(f"/v1/grants/{grant_id}").json()["status"] == "active"
        assert all("refresh_token" not in a.text and first_refresh_token not in a.text for a in answers)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_exchanges_are_rate_limited_per_user(tmp_path: Any, backend: str, oidc: OidcServer, app_issuer: AppIssuer) -> None:
    from tests.support.gk import running_server

    with running_server(backend, tmp_path, GRANTKEEPER_EXCHANGE_RATE_PER_SECOND="0.01", GRANTKEEPER_EXCHANGE_RATE_BURST="2") as gk:
        oidc.set_ttl(AccessToken=3600)
        setup_oidc_integration(gk, oidc, "acme", client_access=True)
        from tests.support.flows import connect_grant

        connect_grant(gk, oidc, "acme", "u1")
        trust(gk, app_issuer)
        codes = [exchange(gk, app_issuer.sign("u1"), origin=app_issuer.origin) for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        assert codes[2].json()["error"] == "slow_down" and int(codes[2].headers["retry-after"]) >= 1
        assert codes[2].headers["access-control-allow-origin"] == app_issuer.origin
        # another user has a budget of their own
        assert exchange(gk, app_issuer.sign("u2"), origin=app_issuer.origin).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_every_token_kind_goes_through_the_exchange(gk: Server, oidc: OidcServer, app_issuer: AppIssuer) -> None:
    """A client-credentials grant is minted like /token mints it; a basic grant has no access token."""
    data = oidc.register_client_metadata(
        [], token_endpoint_auth_method="client_secret_basic", grant_types=["client_credentials"], response_types=[]
    )
    with gk.client() as c:
        r = c.put("/v1/integrations/svc", json={
            "provider": "client_credentials", "endpoints": {"token_url": oidc.token_endpoint},
            "scopes": ["api:read"], "api_base_url": oidc.api_base_url,
            "client_id": data["client_id"], "client_secret": data["client_secret"], "client_access": True,
        })
        assert r.status_code == 201, r.text
        r = c.post("/v1/grants", json={"integration_id": "svc", "user_id": "u1", "credentials": {}, "verify": True})
        assert r.status_code == 201, r.text
        r = c.put("/v1/integrations/pw", json={"provider": "basic", "api_base_url": oidc.api_base_url, "client_access": True})
        assert r.status_code == 201, r.text
        r = c.post("/v1/grants", json={"integration_id": "pw", "user_id": "u1",
                                       "credentials": {"username": "u", "password": "secret-pw-1"}, "verify": False})
        assert r.status_code == 201, r.text
    trust(gk, app_issuer)
    r = exchange(gk, app_issuer.sign("u1"), "svc", origin=app_issuer.origin)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "api:read"
    who = httpx.get(oidc.api_base_url + "/whoami", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert who.json()["account"] == f"client:{data['client_id']}"
    assert exchange(gk, app_issuer.sign("u2"), "svc", origin=app_issuer.origin).json()["error"] == "invalid_grant"
    r = exchange(gk, app_issuer.sign("u1"), "pw", origin=app_issuer.origin)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_target")
    assert "secret-pw-1" not in r.text
    # the integration itself cannot issue access tokens: invalid_target whoever asks, whether
    # or not that user has a grant, whatever scope is asked (not invalid_grant/invalid_scope)
    with gk.client() as c:
        r = c.put("/v1/integrations/keyed", json={"provider": "api_key", "api_base_url": oidc.api_base_url, "client_access": True})
        assert r.status_code == 201, r.text
        r = c.post("/v1/grants", json={"integration_id": "keyed", "user_id": "u1",
                                       "credentials": {"api_key": "key-value-0001"}, "verify": False})
        assert r.status_code == 201, r.text
    for user, iid, extra in [("u1", "keyed", {}), ("nobody", "keyed", {}), ("nobody", "pw", {}),
                             ("u1", "keyed", {"scope": "api:read"})]:
        r = exchange(gk, app_issuer.sign(user), iid, origin=app_issuer.origin, **extra)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_target"), (user, iid, r.text)
        assert "key-value-0001" not in r.text


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_login_hint_picks_among_accounts_and_tokens_stay_in_their_environment(
    gk: Server, oidc: OidcServer, app_issuer: AppIssuer
) -> None:
    oidc.set_ttl(AccessToken=3600)
    setup_oidc_integration(gk, oidc, "acme", client_access=True)
    from tests.support.flows import connect_grant

    connect_grant(gk, oidc, "acme", "u5", account="alice")
    connect_grant(gk, oidc, "acme", "u5", account="bob")
    trust(gk, app_issuer)

    def sub_of(r: httpx.Response) -> str:
        assert r.status_code == 200, r.text
        info = httpx.get(oidc.userinfo_endpoint, headers={"Authorization": f"Bearer {r.json()['access_token']}"})
        sub: str = info.json()["sub"]
        return sub

    jwt = app_issuer.sign("u5")
    assert sub_of(exchange(gk, jwt, origin=app_issuer.origin, login_hint="alice")) == "alice"
    assert sub_of(exchange(gk, jwt, origin=app_issuer.origin, login_hint="bob")) == "bob"
    assert sub_of(exchange(gk, jwt, origin=app_issuer.origin)) == "bob"  # the newest grant
    # an end-user token of this environment is nothing in another one
    with gk.client() as c:
        token = c.post("/v1/end-user-tokens", json={"user_id": "u5"}).json()["token"]
    gk.cli("environments", "create", "other")
    other = api_key(gk, "credentials:read", environment="other")
    r = exchange(gk, token, key=other, subject_type=ACCESS)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
    assert sub_of(exchange(gk, token, key=api_key(gk, "credentials:read"), subject_type=ACCESS, login_hint="alice")) == "alice"
