"""Lifecycle signals (issue 20): expiry warnings, providers' revocation notices, health probes.

Payloads are built here from each scheme's documentation (Slack's request signing, GitHub's
X-Hub-Signature-256, RFC 8417 Security Event Tokens signed by a key served as JWKS from a
loopback issuer). Expiry and probes run in-process with an injectable clock on the same
database as a live server holding real grants from the real oidc-provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import select
from tests.support.credapi import CredApi
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer
from tests.support.tokenapi import TokenApi

from grantkeeper.clock import FakeClock, parse_iso
from grantkeeper.config import Settings
from grantkeeper.runtime import open_runtime
from grantkeeper.signals.expiry import warn_expiring
from grantkeeper.signals.probe import probe_due
from grantkeeper.store.tables import webhook_events

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
GITHUB_SECRET = "It's a Secret to Everybody"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"


def _settings(env: dict[str, str]) -> Settings:
    return Settings(
        database_url=env["GRANTKEEPER_DATABASE_URL"],
        master_keys=env["GRANTKEEPER_MASTER_KEYS"],
        allow_private_networks=True,
        public_url=env["GRANTKEEPER_PUBLIC_URL"],
    )


def _import(gk: Server, integration: str, user: str, account: str) -> str:
    with gk.client() as c:
        r = c.post(
            "/v1/grants",
            json={
                "integration_id": integration,
                "user_id": user,
                "refresh_token": f"rt-{user}-{account}",
                "access_token": f"at-{user}-{account}",
                "provider_account_id": account,
                "verify": False,
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def _status(gk: Server, gid: str) -> dict[str, Any]:
    with gk.client() as c:
        g: dict[str, Any] = c.get(f"/v1/grants/{gid}").json()
        return g


def _audit_actions(gk: Server, gid: str) -> list[str]:
    with gk.client() as c:
        return [
            e["action"]
            for e in c.get("/v1/audit-events", params={"grant_id": gid, "limit": 200}).json()[
                "data"
            ]
        ]


# ------------------------------------------------------------------- expiry warnings


@pytest.mark.oidc
def test_grant_expiring_sent_once_at_the_right_time(
    backend: str, tmp_path: Path, oidc: OidcServer
) -> None:
    lifetime = 10 * 86_400
    oidc.token_extras(refresh_token_expires_in=lifetime)
    with running_server(backend, tmp_path, worker=False) as gk:
        setup_oidc_integration(gk, oidc)
        connected_at = time.time()
        gid = connect_grant(gk, oidc, "acme", "u-exp")
        g = _status(gk, gid)
        assert g["refresh_token_expires_at"] is not None
        expires = parse_iso(g["refresh_token_expires_at"])
        assert abs(expires - (connected_at + lifetime)) < 60

        async def scenario() -> list[int]:
            clock = FakeClock(connected_at)
            rt = await open_runtime(_settings(gk.env), clock=clock)
            try:
                sent = []
                clock.advance(2 * 86_400)  # 8 days left: outside the 7-day window
                sent.append(await warn_expiring(rt))
                clock.advance(1.2 * 86_400)  # 6.8 days left: inside
                sent.append(await warn_expiring(rt))
                sent.append(await warn_expiring(rt))  # once
                clock.advance(3 * 86_400)
                sent.append(await warn_expiring(rt))  # and never again for that expiry
                async with rt.engine.connect() as conn:
                    rows = (
                        await conn.execute(
                            select(webhook_events.c.payload).where(
                                webhook_events.c.type == "grant.expiring",
                                webhook_events.c.grant_id == gid,
                            )
                        )
                    ).all()
                assert len(rows) == 1
                payload = rows[0][0] if isinstance(rows[0][0], dict) else json.loads(rows[0][0])
                assert payload["data"]["grant"]["id"] == gid
                assert abs(parse_iso(payload["data"]["expires_at"]) - expires) < 2
                return sent
            finally:
                await rt.close()

        assert asyncio.run(scenario()) == [0, 1, 0, 0]
        assert _audit_actions(gk, gid).count("grant.expiring") == 1


@pytest.mark.oidc
def test_reconnect_with_a_new_lifetime_warns_again(
    backend: str, tmp_path: Path, oidc: OidcServer
) -> None:
    """A new consent is a new expiry: the app is told about it too."""
    oidc.token_extras(refresh_token_expires_in=3 * 86_400)
    with running_server(backend, tmp_path, worker=False) as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "u-exp2")

        async def warn_now() -> int:
            rt = await open_runtime(_settings(gk.env))
            try:
                return await warn_expiring(rt)
            finally:
                await rt.close()

        assert asyncio.run(warn_now()) == 1
        oidc.token_extras(refresh_token_expires_in=5 * 86_400)
        assert connect_grant(gk, oidc, "acme", "u-exp2") == gid  # same account: same grant
        assert asyncio.run(warn_now()) == 1
        assert asyncio.run(warn_now()) == 0


def test_refresh_token_expiry_rules() -> None:
    from grantkeeper.providers import load_catalog
    from grantkeeper.signals.expiry import refresh_token_expiry

    cat = load_catalog()
    now = 1_000_000.0
    # explicit lifetime, provider does not rotate: nothing but the user can extend it
    e = refresh_token_expiry(
        cat.get("linkedin"),
        raw={"refresh_token_expires_in": 100},
        new_refresh_token="r",
        previous_refresh_token=None,
        fresh_consent=True,
        now=now,
    )
    assert e is not None and e.expires_at == now + 100 and e.final
    # catalog lifetime of a provider that rotates on every refresh: a keep-alive beats it
    e = refresh_token_expiry(
        cat.get("box"),
        raw={},
        new_refresh_token="r2",
        previous_refresh_token="r1",
        fresh_consent=False,
        now=now,
    )
    assert e is not None and not e.final and e.expires_at == now + 5_184_000
    # no new refresh token and no lifetime in the response: nothing new
    assert (
        refresh_token_expiry(
            cat.get("box"),
            raw={},
            new_refresh_token=None,
            previous_refresh_token="r1",
            fresh_consent=False,
            now=now,
        )
        is None
    )
    # nonsense values are ignored
    for bad in ("x", -5, 0, True, 10**12):
        assert (
            refresh_token_expiry(
                cat.get("oidc"),
                raw={"refresh_token_expires_in": bad},
                new_refresh_token="r",
                previous_refresh_token=None,
                fresh_consent=True,
                now=now,
            )
            is None
        )


# ------------------------------------------------------------------- Slack


def _slack_post(
    gk: Server,
    body: bytes,
    *,
    ts: int | None = None,
    secret: str = SLACK_SECRET,
    env: str = "default",
) -> httpx.Response:
    ts = int(time.time()) if ts is None else ts
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{gk.base_url}/provider-events/{env}/slack",
        content=body,
        headers={
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sig,
            "Content-Type": "application/json",
        },
    )


def _slack_integration(gk: Server) -> None:
    with gk.client() as c:
        r = c.put(
            "/v1/integrations/slack",
            json={
                "provider": "slack",
                "client_id": "1234.5678",
                "client_secret": "slack-client-secret",
                "return_urls": ["https://app.example/done"],
                "provider_events_secret": SLACK_SECRET,
            },
        )
        assert r.status_code == 201, r.text
        view = r.json()
        assert view["provider_events_secret_set"] is True
        assert SLACK_SECRET not in r.text


def test_slack_signed_events_revoke_the_right_grants(gk: Server, webhook_sink: Any) -> None:
    _slack_integration(gk)
    with gk.client() as c:
        c.post(
            "/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.invalid"]}
        ).raise_for_status()
    u1 = _import(gk, "slack", "a", "T1/U1")
    u2 = _import(gk, "slack", "b", "T1/U2")
    other_team = _import(gk, "slack", "c", "T2/U1")

    # the url_verification handshake answers the challenge
    r = _slack_post(
        gk,
        json.dumps(
            {
                "type": "url_verification",
                "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                "token": "x",
            }
        ).encode(),
    )
    assert r.status_code == 200 and r.json() == {
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    }

    event = {
        "token": "XXYYZZ",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": "Ev01",
        "event_time": int(time.time()),
        "event": {"type": "tokens_revoked", "tokens": {"oauth": ["U1"], "bot": []}},
    }
    body = json.dumps(event).encode()
    started = time.monotonic()
    r = _slack_post(gk, body)
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] == 1
    assert time.monotonic() - started < 1.0
    g = _status(gk, u1)
    assert g["status"] == "invalid" and g["failure"]["code"] == "revoked_at_provider"
    assert g["has_refresh_token"] is False  # the stored secrets are gone
    assert _status(gk, u2)["status"] == "active" and _status(gk, other_team)["status"] == "active"
    with gk.client() as c:
        assert c.post(f"/v1/grants/{u1}/token", json={}).status_code == 409
    hooks = webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.invalid")
    assert [h.json()["data"]["grant"]["id"] for h in hooks] == [u1]

    # Slack retries the same event: answered, nothing more happens
    assert _slack_post(gk, body).json()["revoked"] == 0
    # the workspace uninstalls the app: every grant of that team
    uninstall = dict(event, event_id="Ev02", event={"type": "app_uninstalled"})
    assert _slack_post(gk, json.dumps(uninstall).encode()).json()["revoked"] == 1
    assert _status(gk, u2)["status"] == "invalid"
    assert _status(gk, other_team)["status"] == "active"
    time.sleep(1.0)
    assert sorted(
        h.json()["data"]["grant"]["id"]
        for h in webhook_sink.received
        if h.json()["type"] == "grant.invalid"
    ) == sorted([u1, u2])


def test_slack_forged_stale_or_wrong_secret_change_nothing(gk: Server) -> None:
    _slack_integration(gk)
    gid = _import(gk, "slack", "a", "T1/U1")
    event = {
        "team_id": "T1",
        "type": "event_callback",
        "event_id": "Ev9",
        "event": {"type": "tokens_revoked", "tokens": {"oauth": ["U1"]}},
    }
    body = json.dumps(event).encode()
    assert _slack_post(gk, body, secret="not-the-secret").status_code == 401
    assert _slack_post(gk, body, ts=int(time.time()) - 400).status_code == 401  # outside 5 minutes
    tampered = body.replace(b"U1", b"U2")
    ts = int(time.time())
    sig = (
        "v0="
        + hmac.new(SLACK_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    )
    r = httpx.post(
        f"{gk.base_url}/provider-events/default/slack",
        content=tampered,
        headers={"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig},
    )
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "provider_event_unverified"
    assert (
        httpx.post(f"{gk.base_url}/provider-events/default/slack", content=body).status_code == 401
    )
    assert _slack_post(gk, b"{not json").status_code == 400
    assert _slack_post(gk, body, env="nope").status_code == 404
    assert _status(gk, gid)["status"] == "active"
    assert SLACK_SECRET not in gk.log_text()


def test_unverified_notifications_are_rate_limited(gk: Server) -> None:
    _slack_integration(gk)
    body = b'{"type": "event_callback"}'
    # sent 8 at a time: one by one on a loaded machine, the bucket (1/s) refills as fast
    # as the requests come, and the test saw no 429 at all
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: _slack_post(gk, body, secret="forged").status_code, range(60))
        )
    assert set(codes) <= {401, 429}
    assert codes.count(401) >= 20, "the burst is answered 401 (unverified), not 429"
    assert 429 in codes
    # a genuine delivery still goes through
    assert (
        _slack_post(
            gk, json.dumps({"type": "url_verification", "challenge": "c"}).encode()
        ).status_code
        == 200
    )


# ------------------------------------------------------------------- GitHub


def _github_post(
    gk: Server,
    event: str,
    payload: dict[str, Any],
    *,
    secret: str = GITHUB_SECRET,
    delivery: str | None = None,
) -> httpx.Response:
    body = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{gk.base_url}/provider-events/default/gh",
        content=body,
        headers={
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
        },
    )


def test_github_authorization_revoked(gk: Server) -> None:
    with gk.client() as c:
        r = c.put(
            "/v1/integrations/gh",
            json={
                "provider": "github",
                "client_id": "Iv1.abc",
                "client_secret": "gh-secret",
                "return_urls": ["https://app.example/done"],
                "provider_events_secret": GITHUB_SECRET,
            },
        )
        assert r.status_code == 201, r.text
    octocat = _import(gk, "gh", "a", "583231")
    other = _import(gk, "gh", "b", "1")
    payload = {"action": "revoked", "sender": {"login": "octocat", "id": 583231, "type": "User"}}
    assert _github_post(gk, "github_app_authorization", payload, secret="wrong").status_code == 401
    assert _status(gk, octocat)["status"] == "active"
    r = _github_post(gk, "github_app_authorization", payload)
    assert r.status_code == 200 and r.json()["revoked"] == 1
    assert _status(gk, octocat)["failure"]["code"] == "revoked_at_provider"
    assert _status(gk, other)["status"] == "active"
    # ping and other events are accepted and change nothing
    assert (
        _github_post(gk, "ping", {"zen": "Keep it logically awesome.", "hook_id": 1}).json()[
            "revoked"
        ]
        == 0
    )
    # the user connects again; a replay of the old notice (under a fresh delivery id, which
    # GitHub does not sign) must not kill the new grant
    again = _import(gk, "gh", "a", "583231")
    assert _status(gk, again)["status"] == "active"
    assert _github_post(gk, "github_app_authorization", payload).json()["revoked"] == 0
    assert _status(gk, again)["status"] == "active"


# ------------------------------------------------------------------- Security Event Tokens


class LocalIssuer:
    """A loopback OpenID issuer that publishes discovery and a JWKS with the test's keys."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(
            2048, parameters={"kid": "k-rsa", "use": "sig", "alg": "RS256"}
        )
        self.ec = ECKey.generate_key(
            "P-256", parameters={"kid": "k-ec", "use": "sig", "alg": "ES256"}
        )
        issuer_ref = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/.well-known/openid-configuration":
                    doc = {
                        "issuer": issuer_ref.issuer,
                        "authorization_endpoint": issuer_ref.issuer + "/authorize",
                        "token_endpoint": issuer_ref.issuer + "/token",
                        "jwks_uri": issuer_ref.issuer + "/jwks",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                elif self.path == "/jwks":
                    doc = {
                        "keys": [
                            issuer_ref.rsa.as_dict(private=False),
                            issuer_ref.ec.as_dict(private=False),
                        ]
                    }
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set_token(
        self, claims: dict[str, Any], *, key: str = "rsa", alg: str | None = None
    ) -> bytes:
        k = self.rsa if key == "rsa" else self.ec
        header = {
            "alg": alg or ("RS256" if key == "rsa" else "ES256"),
            "kid": k.kid,
            "typ": "secevent+jwt",
        }
        return jwt.encode(header, claims, k).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    i = LocalIssuer()
    yield i
    i.close()


def _set_claims(
    issuer: LocalIssuer, sub: str, *, event: str = RISC + "tokens-revoked", **over: Any
) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": issuer.issuer,
        "aud": "client-123",
        "iat": int(time.time()),
        "jti": uuid.uuid4().hex,
        "events": {
            event: {
                "subject": {"subject_type": "iss_sub", "iss": issuer.issuer, "sub": sub},
                "reason": "revoked",
            }
        },
    }
    claims.update(over)
    return claims


def _set_post(gk: Server, token: bytes) -> httpx.Response:
    return httpx.post(
        f"{gk.base_url}/provider-events/default/sso",
        content=token,
        headers={"Content-Type": "application/secevent+jwt", "Accept": "application/json"},
    )


def test_security_event_tokens(gk: Server, issuer: LocalIssuer) -> None:
    with gk.client() as c:
        r = c.put(
            "/v1/integrations/sso",
            json={
                "provider": "oidc",
                "issuer": issuer.issuer,
                "client_id": "client-123",
                "client_secret": "s",
                "return_urls": ["https://app.example/done"],
            },
        )
        assert r.status_code == 201, r.text
    alice = _import(gk, "sso", "a", "sub-alice")
    bob = _import(gk, "sso", "b", "sub-bob")
    carol = _import(gk, "sso", "c", "sub-carol")

    refused = [
        issuer.set_token(_set_claims(issuer, "sub-alice", aud="someone-else")),  # wrong audience
        issuer.set_token(
            _set_claims(issuer, "sub-alice", iss="https://evil.example")
        ),  # wrong issuer
        issuer.set_token(_set_claims(issuer, "sub-alice", iat=int(time.time()) - 600)),  # stale
    ]
    for token in refused:
        assert _set_post(gk, token).status_code == 401
    # signed by a key that is not in the issuer's JWKS
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k-rsa"})
    forged = jwt.encode(
        {"alg": "RS256", "kid": "k-rsa"}, _set_claims(issuer, "sub-alice"), stranger
    ).encode()
    assert _set_post(gk, forged).status_code == 401
    # alg none
    assert _set_post(gk, _none_token(_set_claims(issuer, "sub-alice"))).status_code == 401
    assert _set_post(gk, b"not a jwt").status_code == 400
    assert _status(gk, alice)["status"] == "active"

    token = issuer.set_token(_set_claims(issuer, "sub-alice"))
    started = time.monotonic()
    r = _set_post(gk, token)
    assert r.status_code == 202, r.text
    assert time.monotonic() - started < 1.0
    assert _status(gk, alice)["failure"]["code"] == "revoked_at_provider"
    assert _status(gk, bob)["status"] == "active"
    # the same jti again is refused
    assert _set_post(gk, token).status_code == 401
    # CAEP session revoked with the subject at the top level (sub_id), signed with ES256
    caep = _set_claims(
        issuer, "x", event="https://schemas.openid.net/secevent/caep/event-type/session-revoked"
    )
    caep["events"] = {
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked": {
            "event_timestamp": int(time.time())
        }
    }
    caep["sub_id"] = {"format": "iss_sub", "iss": issuer.issuer, "sub": "sub-bob"}
    assert _set_post(gk, issuer.set_token(caep, key="ec")).status_code == 202
    assert _status(gk, bob)["status"] == "invalid"
    # a verification event changes nothing
    verification = _set_claims(issuer, "sub-carol", event=RISC + "verification")
    assert _set_post(gk, issuer.set_token(verification)).status_code == 202
    assert _status(gk, carol)["status"] == "active"
    assert _audit_actions(gk, alice).count("grant.invalid") == 1


def _none_token(claims: dict[str, Any]) -> bytes:
    import base64

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'secevent+jwt'})}.{b64(claims)}.".encode()


# ------------------------------------------------------------------- health probe


@pytest.mark.oidc
def test_probe_marks_a_grant_revoked_at_the_provider(
    backend: str, tmp_path: Path, oidc: OidcServer
) -> None:
    oidc.set_ttl(AccessToken=3600)
    with running_server(backend, tmp_path, worker=False) as gk:
        setup_oidc_integration(gk, oidc, health_probe_interval=300)
        gid = connect_grant(gk, oidc, "acme", "u-probe", account="probe-revoked")
        healthy = connect_grant(gk, oidc, "acme", "u-probe2", account="probe-fine")
        assert oidc.revoke_account_grants("probe-revoked") >= 1

        async def scenario() -> int:
            clock = FakeClock(time.time())
            rt = await open_runtime(_settings(gk.env), clock=clock)
            try:
                assert await probe_due(rt) == 0  # first pass spreads the probes over the interval
                clock.advance(301)
                return await probe_due(rt)
            finally:
                await rt.close()

        assert asyncio.run(scenario()) == 2
        g = _status(gk, gid)
        assert g["status"] == "invalid", g
        assert _status(gk, healthy)["status"] == "active"
        assert oidc.stats()["userinfo"] >= 2


def test_probe_checks_grants_of_every_kind(backend: str, tmp_path: Path, cred_api: CredApi, token_api: TokenApi) -> None:
    """Non-code kinds have no userinfo endpoint: the probe is the kind's verification request,
    stamped with the credential (api_key) or the minted access token (jwt_bearer). A refused
    API key is revoked at the provider outright; a refused access token is confirmed by one
    forced mint, which the provider refuses for a withdrawn key (``invalid_grant``)."""
    keep, drop = "sk_live_" + "keepkeepkeepkeep0001", "sk_live_" + "dropdropdropdrop0002"
    cred_api.keys.update({keep, drop})
    pems: dict[str, str] = {}
    for kid in ("k-keep", "k-drop"):
        key = RSAKey.generate_key(2048, private=True)
        pems[kid] = key.as_pem(private=True).decode()
        token_api.keys[kid] = (f"{kid}@robots.example.com", RSAKey.import_key(key.as_pem(private=False)))
    with running_server(backend, tmp_path, worker=False) as gk:
        with gk.client() as c:
            r = c.put("/v1/integrations/keys", json={
                "provider": "api_key", "api_base_url": cred_api.base_url + "/bearer",
                "verify_request": {"path": "/v1/balance"}, "health_probe_interval": 300,
            })
            assert r.status_code == 201, r.text
            r = c.put("/v1/integrations/sa", json={
                "provider": "jwt_bearer", "endpoints": {"token_url": token_api.token_url},
                "api_base_url": token_api.base_url + "/api",
                "verify_request": {"path": "/whoami"}, "health_probe_interval": 300,
            })
            assert r.status_code == 201, r.text
            gids: dict[str, str] = {}
            for name, iid, creds in [
                ("key-keep", "keys", {"api_key": keep}),
                ("key-drop", "keys", {"api_key": drop}),
                ("sa-keep", "sa", {"private_key": pems["k-keep"], "issuer": "k-keep@robots.example.com", "key_id": "k-keep"}),
                ("sa-drop", "sa", {"private_key": pems["k-drop"], "issuer": "k-drop@robots.example.com", "key_id": "k-drop"}),
            ]:
                r = c.post("/v1/grants", json={"integration_id": iid, "user_id": name, "credentials": creds, "verify": True})
                assert r.status_code == 201, r.text
                gids[name] = r.json()["id"]
        # withdrawn at the providers: the API key, and the service account's key and tokens
        cred_api.keys.discard(drop)
        del token_api.keys["k-drop"]
        for token, (_, who) in list(token_api.tokens.items()):
            if who == "k-drop@robots.example.com":
                del token_api.tokens[token]

        async def scenario() -> int:
            clock = FakeClock(time.time())
            rt = await open_runtime(_settings(gk.env), clock=clock)
            try:
                assert await probe_due(rt) == 0
                clock.advance(301)
                return await probe_due(rt)
            finally:
                await rt.close()

        assert asyncio.run(scenario()) == 4
        assert _status(gk, gids["key-keep"])["status"] == "active"
        assert _status(gk, gids["sa-keep"])["status"] == "active"
        for name in ("key-drop", "sa-drop"):
            g = _status(gk, gids[name])
            assert g["status"] == "invalid", (name, g)
        assert _status(gk, gids["key-drop"])["failure"]["code"] == "revoked_at_provider"
        probed = [s for s in cred_api.seen if s.path == "/bearer/v1/balance"]
        assert len(probed) == 4  # two verifications at creation, two probes
        log = gk.log_text()
        assert keep not in log and drop not in log
