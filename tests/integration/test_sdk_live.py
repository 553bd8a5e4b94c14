"""The Python SDK against a real grantkeeper and the real oidc-provider.

The unit tests (tests/unit/client) pin the SDK's behaviour against a mock
transport; these check that it agrees with the server it talks to, on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
from tests.support.credapi import CredApi
from tests.support.flows import RETURN_URL
from tests.support.gk import Server, WebhookSink
from tests.support.oidc import OidcServer, pkce_pair

from grantkeeper.client import (
    AccessToken,
    AsyncClient,
    AsyncGrantAuth,
    AuthenticationError,
    Client,
    ConnectSession,
    Grant,
    GrantAuth,
    GrantRevokedError,
    IntegrationInUseError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    RefreshTokenRejectedError,
    ReturnToNotAllowedError,
    Stamp,
    UnsupportedGrantKindError,
    ValidationError,
)

pytestmark = pytest.mark.oidc


def put_integration(vault: Client, gk: Server, oidc: OidcServer, integration_id: str = "acme") -> tuple[str, str]:
    client_id, secret = oidc.register_client([gk.base_url + "/oauth/callback"])
    integ = vault.integrations.put(
        integration_id,
        provider="oidc",
        issuer=oidc.issuer,
        client_id=client_id,
        client_secret=secret,
        scopes=["openid", "offline_access", "api:read"],
        return_urls=[RETURN_URL],
        api_base_url=oidc.api_base_url,
    )
    assert integ.id == integration_id and integ.provider == "oidc"
    assert integ.client_secret_set is True and integ.client_id == client_id
    assert integ.callback_url == gk.base_url + "/oauth/callback"
    assert integ.scopes == ("openid", "offline_access", "api:read")
    assert integ.return_urls == (RETURN_URL,)
    assert "client_secret" not in integ.extra
    return client_id, secret


def dance(oidc: OidcServer, gk: Server, session: ConnectSession, account: str = "alice") -> dict[str, str]:
    oidc.set_account(account)
    outcome = oidc.authorize(session.connect_url, stop_origin=gk.base_url)
    assert outcome.query.get("status") == "success", outcome.responses
    return outcome.query


def connect(vault: Client, gk: Server, oidc: OidcServer, user_id: str, account: str = "alice") -> str:
    session = vault.connect.create_session("acme", user_id, RETURN_URL + "/done")
    return dance(oidc, gk, session, account)["grant_id"]


def echo(oidc: OidcServer, token: str) -> httpx.Response:
    return oidc.http.get(oidc.api_base_url + "/echo/x", headers={"Authorization": f"Bearer {token}"})


def test_sync_client_end_to_end(gk: Server, oidc: OidcServer) -> None:
    with Client(gk.base_url, gk.admin_key) as vault:
        # catalog
        names = {p.name for p in vault.providers.list()}
        assert {"oidc", "oauth2", "google-mail"} <= names
        gmail = vault.providers.get("google-mail")
        assert gmail.display_name == "Gmail" and gmail.auth_mode == "oidc"
        assert "google-mail" in [p.name for p in vault.providers.list(q="gmail")]  # service-account presets match too

        # integrations
        put_integration(vault, gk, oidc)
        again = vault.integrations.put(
            "acme", provider="oidc", issuer=oidc.issuer, client_id=vault.integrations.get("acme").client_id,
            scopes=["openid", "offline_access", "api:read"], return_urls=[RETURN_URL], api_base_url=oidc.api_base_url,
        )
        assert again.client_secret_set is True  # leaving the secret out keeps it
        assert [i.id for i in vault.integrations.list()] == ["acme"]

        # the dance
        session = vault.connect.create_session("acme", "user-1", RETURN_URL + "/done")
        assert isinstance(session, ConnectSession) and session.expires_at is not None
        assert session.expires_at > datetime.now(UTC)
        assert vault.connect.get_session(session.id).status == "pending"
        q = dance(oidc, gk, session)
        status = vault.connect.get_session(session.id)
        assert status.status == "completed" and status.grant_id == q["grant_id"] and status.error is None
        gid = q["grant_id"]

        # grants
        grant = vault.grants.get(gid)
        assert isinstance(grant, Grant)
        assert grant.status == "active" and grant.is_active and grant.user_id == "user-1"
        assert grant.provider == "oidc" and grant.provider_account_id == "alice"
        assert grant.has_refresh_token and grant.failure is None
        assert grant.created_at.tzinfo is not None and grant.access_token_expires_at is not None
        page = vault.grants.list(user_id="user-1")
        assert isinstance(page, Page) and [g.id for g in page] == [gid] and page.next_offset is None

        # tokens
        token = vault.token(gid, min_ttl=0)
        assert isinstance(token, AccessToken) and token.grant_id == gid
        assert token.token_type.lower() == "bearer" and token.expires_in is not None and token.expires_in > 0
        assert "openid" in token.scopes and token.access_token not in repr(token)
        assert echo(oidc, token.access_token).json()["account"] == "alice"
        forced = vault.grants.token(gid, force_refresh=True)
        assert forced.access_token != token.access_token
        assert echo(oidc, forced.access_token).json()["account"] == "alice"

        # reconnect: same user, same account -> same grant
        rc = vault.grants.reconnect(gid, RETURN_URL + "/again")
        assert dance(oidc, gk, rc)["grant_id"] == gid

        # more grants, paged
        others = [connect(vault, gk, oidc, f"user-{n}", account=f"acct-{n}") for n in (2, 3)]
        assert len({gid, *others}) == 3
        first = vault.grants.list(limit=2)
        assert len(first) == 2 and first.limit == 2 and first.next_offset == 2 and first.has_more
        assert {g.id for g in vault.grants.iter(limit=1)} == {gid, *others}
        assert [g.id for g in vault.grants.iter(integration_id="acme", user_id="user-3")] == [others[1]]

        # audit
        events = vault.audit_events.list(grant_id=gid, limit=200)
        issued = [e for e in events if e.action == "token.issued"]
        assert len(issued) == 2 and all(e.grant_id == gid for e in issued)
        assert issued[0].api_key_id is not None and issued[0].at is not None
        assert all(e.grant_id == gid for e in events)
        one = vault.audit_events.list(limit=1)
        assert len(one) == 1 and one.next_offset == 1

        # delete: revoked at the provider, readable afterwards, no more tokens
        revocation = vault.grants.delete(gid)
        assert (revocation.id, revocation.status, revocation.provider_revocation) == (gid, "revoked", "succeeded")
        assert vault.grants.get(gid).status == "revoked"
        with pytest.raises(GrantRevokedError) as exc_info:
            vault.token(gid)
        assert exc_info.value.status == 409 and exc_info.value.code == "grant_revoked"
        assert echo(oidc, forced.access_token).status_code == 401
        assert [g.id for g in vault.grants.list(status="revoked")] == [gid]

        # an integration with grants cannot go; one without can
        with pytest.raises(IntegrationInUseError):
            vault.integrations.delete("acme")
        put_integration(vault, gk, oidc, "spare")
        vault.integrations.delete("spare")
        with pytest.raises(NotFoundError):
            vault.integrations.get("spare")


def test_errors_are_decoded(gk: Server, oidc: OidcServer) -> None:
    with Client(gk.base_url, gk.admin_key) as vault:
        put_integration(vault, gk, oidc)
        for unknown in (str(uuid.uuid4()), "not-a-grant-id"):
            with pytest.raises(NotFoundError) as nf:
                vault.grants.get(unknown)
            assert nf.value.status == 404 and nf.value.code == "not_found" and nf.value.title
        with pytest.raises(NotFoundError):
            vault.token(str(uuid.uuid4()))
        with pytest.raises(ReturnToNotAllowedError) as rt:
            vault.connect.create_session("acme", "user-1", "https://evil.example/cb")
        assert rt.value.status == 422 and rt.value.code == "return_to_not_allowed"
        assert isinstance(rt.value, ValidationError)
        with pytest.raises(ValidationError):
            vault.integrations.put("Bad Id!", provider="oidc", client_id="x")
        with pytest.raises(NotFoundError):
            vault.providers.get("no-such-provider")
        with pytest.raises(RefreshTokenRejectedError) as rej:
            vault.grants.import_("acme", "user-9", "not-a-refresh-token")
        assert rej.value.code == "refresh_token_rejected" and "not-a-refresh-token" not in str(rej.value)

    wrong = gk.admin_key[:-4] + "AAAA"
    for key in (wrong, "gk_unknown_key", "nonsense"):
        with Client(gk.base_url, key) as bad, pytest.raises(AuthenticationError) as auth_err:
            bad.grants.list()
        assert auth_err.value.status == 401 and key not in str(auth_err.value) and key not in repr(auth_err.value)

    created = json.loads(gk.cli("api-keys", "create", "--name", "reader", "--scope", "grants:read", "--json").stdout)
    with Client(gk.base_url, created["key"]) as reader:
        assert list(reader.grants.list()) == []
        with pytest.raises(PermissionDeniedError) as denied:
            reader.token(str(uuid.uuid4()))
        assert denied.value.status == 403
    gk.cli("api-keys", "revoke", created["id"])
    with Client(gk.base_url, created["key"]) as revoked, pytest.raises(AuthenticationError):
        revoked.grants.list()


def test_import_with_verification(gk: Server, oidc: OidcServer) -> None:
    with Client(gk.base_url, gk.admin_key) as vault:
        client_id, secret = put_integration(vault, gk, oidc)
        # a refresh token obtained elsewhere, for the same OAuth client
        oidc.set_account("carol")
        verifier, challenge = pkce_pair()
        redirect = gk.base_url + "/oauth/callback"
        outcome = oidc.authorize(oidc.authorization_url(client_id, redirect, code_challenge=challenge, state="s"))
        r = oidc.http.post(
            oidc.token_endpoint,
            data={"grant_type": "authorization_code", "code": outcome.code or "", "redirect_uri": redirect, "code_verifier": verifier},
            auth=httpx.BasicAuth(quote(client_id, safe=""), quote(secret, safe="")),
        )
        refresh_token = r.json()["refresh_token"]
        grant = vault.grants.import_("acme", "user-carol", refresh_token, scopes=["openid", "offline_access", "api:read"])
        assert grant.status == "active" and grant.has_refresh_token and grant.user_id == "user-carol"
        assert echo(oidc, vault.token(grant.id).access_token).json()["account"] == "carol"


def test_webhook_endpoints_crud(gk: Server, oidc: OidcServer, webhook_sink: WebhookSink) -> None:
    with Client(gk.base_url, gk.admin_key) as vault:
        ep = vault.webhook_endpoints.create(webhook_sink.url, ["grant.created", "grant.deleted"])
        assert ep.secret is not None and ep.secret.startswith("whsec_") and ep.secret not in repr(ep)
        assert ep.url == webhook_sink.url and ep.events == ("grant.created", "grant.deleted")
        listed = vault.webhook_endpoints.list()
        assert [e.id for e in listed] == [ep.id] and listed[0].secret is None
        got = vault.webhook_endpoints.get(ep.id)
        assert got.id == ep.id and got.secret is None and got.created_at is not None

        put_integration(vault, gk, oidc)
        gid = connect(vault, gk, oidc, "user-1")
        hook = webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.created", timeout=30)[0]
        assert hook.json()["data"]["grant"]["id"] == gid
        assert vault.grants.get(gid).id == hook.json()["data"]["grant"]["id"]

        vault.webhook_endpoints.delete(ep.id)
        with pytest.raises(NotFoundError):
            vault.webhook_endpoints.get(ep.id)
        with pytest.raises(NotFoundError):
            vault.webhook_endpoints.delete(ep.id)
        assert vault.webhook_endpoints.list() == []
        with pytest.raises(ValidationError):
            vault.webhook_endpoints.create(webhook_sink.url, ["grant.exploded"])


# ---------------------------------------------------------------- auth adapters


def test_auth_adapter_gets_a_new_token_after_expiry(gk: Server, oidc: OidcServer) -> None:
    oidc.set_ttl(AccessToken=2)
    with Client(gk.base_url, gk.admin_key) as vault:
        put_integration(vault, gk, oidc)
        gid = connect(vault, gk, oidc, "user-1")
        auth = vault.auth(gid)
        sent: list[str] = []

        def record(request: httpx.Request) -> None:
            sent.append(request.headers["authorization"])

        with httpx.Client(auth=auth, event_hooks={"request": [record]}) as api:
            assert api.get(oidc.api_base_url + "/echo/x").json()["account"] == "alice"
            first = sent[-1].removeprefix("Bearer ")
            time.sleep(3.5)
            assert echo(oidc, first).status_code == 401  # expired at the provider
            r = api.get(oidc.api_base_url + "/echo/x")
            assert r.status_code == 200 and r.json()["account"] == "alice"
            assert sent[-1] != "Bearer " + first
            assert auth.get_token().access_token != first


def test_auth_adapter_refreshes_on_401(gk: Server, oidc: OidcServer) -> None:
    """A token the provider no longer accepts: the adapter forces one refresh and replays.

    The adapter's clock is frozen so it keeps trusting its cached token after
    the provider let it expire (as after clock skew or an early revocation).
    """
    oidc.set_ttl(AccessToken=2)
    with Client(gk.base_url, gk.admin_key) as vault:
        put_integration(vault, gk, oidc)
        gid = connect(vault, gk, oidc, "user-1")
        auth = GrantAuth(vault, gid, min_ttl=0, clock=lambda: 0.0)
        statuses: list[int] = []

        def record(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        with httpx.Client(auth=auth, event_hooks={"response": [record]}) as api:
            r = api.post(oidc.api_base_url + "/echo/a", json={"n": 1})
            assert r.status_code == 200 and statuses == [200]
            cached = auth.get_token()
            time.sleep(3.5)
            assert echo(oidc, cached.access_token).status_code == 401
            r = api.post(oidc.api_base_url + "/echo/b", json={"n": 2})
            assert statuses == [200, 401, 200]
            assert r.status_code == 200 and r.json()["account"] == "alice"
            assert json.loads(r.json()["body"]) == {"n": 2}  # the body was replayed
            assert auth.get_token().access_token != cached.access_token
        forced = [e for e in vault.audit_events.list(grant_id=gid, limit=200) if e.action == "grant.refreshed"]
        assert forced


def test_requests_auth(gk: Server, oidc: OidcServer) -> None:
    requests = pytest.importorskip("requests")
    with Client(gk.base_url, gk.admin_key) as vault:
        put_integration(vault, gk, oidc)
        gid = connect(vault, gk, oidc, "user-1")
        with requests.Session() as session:
            session.auth = vault.requests_auth(gid)
            r = session.get(oidc.api_base_url + "/echo/x", timeout=10)
            assert r.status_code == 200 and r.json()["account"] == "alice"


def test_proxy(gk: Server, oidc: OidcServer) -> None:
    with Client(gk.base_url, gk.admin_key) as vault:
        put_integration(vault, gk, oidc)
        gid = connect(vault, gk, oidc, "user-1")
        r = vault.proxy.get(gid, "/echo/hello", params={"q": "1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["account"] == "alice" and body["path"] == "/api/echo/hello" and body["query"] == {"q": "1"}
        assert "authorization" not in {k.lower() for k in r.headers}


# ---------------------------------------------------------------- async


@pytest.mark.anyio
async def test_async_client_end_to_end(gk: Server, oidc: OidcServer) -> None:
    with Client(gk.base_url, gk.admin_key) as sync_vault:
        client_id, secret = put_integration(sync_vault, gk, oidc)
    async with AsyncClient(gk.base_url, gk.admin_key) as vault:
        integ = await vault.integrations.get("acme")
        assert integ.client_id == client_id
        assert [i.id for i in await vault.integrations.list()] == ["acme"]
        assert any(p.name == "google-mail" for p in await vault.providers.list())
        session = await vault.connect.create_session("acme", "user-a", RETURN_URL + "/done")
        gid = dance(oidc, gk, session)["grant_id"]
        assert (await vault.connect.get_session(session.id)).grant_id == gid
        grant = await vault.grants.get(gid)
        assert grant.status == "active"
        assert [g.id async for g in vault.grants.iter(limit=1)] == [gid]
        page = await vault.grants.list(integration_id="acme")
        assert [g.id for g in page] == [gid]
        token = await vault.token(gid, min_ttl=0)
        assert echo(oidc, token.access_token).json()["account"] == "alice"
        rc = await vault.grants.reconnect(gid, RETURN_URL + "/again")
        assert dance(oidc, gk, rc)["grant_id"] == gid

        # AsyncClient.auth with httpx.AsyncClient
        async with httpx.AsyncClient(auth=vault.auth(gid)) as api:
            assert (await api.get(oidc.api_base_url + "/echo/x")).json()["account"] == "alice"
        # ... and its 401 path: a cached token that expired at the provider (frozen adapter clock)
        oidc.set_ttl(AccessToken=2)
        frozen = AsyncGrantAuth(vault, gid, min_ttl=0, clock=lambda: 0.0)
        stale = (await frozen.get_token(force_refresh=True)).access_token  # a 2-second token
        statuses: list[int] = []

        async def record(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        async with httpx.AsyncClient(auth=frozen, event_hooks={"response": [record]}) as api:
            time.sleep(3.5)
            r = await api.get(oidc.api_base_url + "/echo/x")
            assert statuses == [401, 200] and r.json()["account"] == "alice"
            assert (await frozen.get_token()).access_token != stale
        oidc.set_ttl(AccessToken=60)

        # the sync adapter works with httpx.AsyncClient too
        with Client(gk.base_url, gk.admin_key) as sync_vault:
            async with httpx.AsyncClient(auth=sync_vault.auth(gid)) as api:
                assert (await api.get(oidc.api_base_url + "/echo/x")).json()["account"] == "alice"

        ep = await vault.webhook_endpoints.create("http://127.0.0.1:9/hook", ["*"])
        assert [e.id for e in await vault.webhook_endpoints.list()] == [ep.id]
        assert (await vault.webhook_endpoints.get(ep.id)).url == "http://127.0.0.1:9/hook"
        await vault.webhook_endpoints.delete(ep.id)

        events = await vault.audit_events.list(grant_id=gid)
        assert any(e.action == "token.issued" for e in events)

        with pytest.raises(NotFoundError):
            await vault.grants.get(str(uuid.uuid4()))
        with pytest.raises(ReturnToNotAllowedError):
            await vault.connect.create_session("acme", "user-a", "https://evil.example/")
        revocation = await vault.grants.delete(gid)
        assert revocation.provider_revocation == "succeeded"
        with pytest.raises(GrantRevokedError):
            await vault.token(gid)
    async with AsyncClient(gk.base_url, gk.admin_key + "x") as bad:
        with pytest.raises(AuthenticationError):
            await bad.grants.list()




# ---------------------------------------------------------------- auth() for every kind

API_KEY = "sk_test_" + "sdkSdkSdkSdk00000001"
API_KEY_2 = "sk_test_" + "sdkSdkSdkSdk00000002"


def _credential_grant(vault: Client, gk: Server, iid: str, body: dict[str, object], creds: dict[str, str]) -> str:
    vault.integrations.put(iid, **body)  # type: ignore[arg-type]
    with gk.client() as c:
        r = c.post("/v1/grants", json={"integration_id": iid, "user_id": "sdk-user", "credentials": creds, "verify": True})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize(
    ("prefix", "stamp"),
    [
        ("/bearer", None),
        ("/header", {"in": "header", "name": "X-API-Key", "template": "{api_key}"}),
        ("/query", {"in": "query", "name": "api_key"}),
        ("/basic", {"in": "basic"}),
    ],
)
def test_auth_stamps_api_keys_as_the_integration_says(gk: Server, cred_api: CredApi, prefix: str, stamp: dict[str, str] | None) -> None:
    """``auth()`` on an api_key grant: the credential from ``/credentials``, stamped by the
    integration's stamp (looked up once), with httpx sync and async and with requests."""
    cred_api.keys.add(API_KEY)
    cred_api.logins.add((API_KEY, ""))  # Stripe's documented basic form: the key, no password
    body: dict[str, object] = {"provider": "api_key", "api_base_url": cred_api.base_url + prefix,
                               "verify_request": {"path": "/v1/balance"}}
    if stamp:
        body["stamp"] = stamp
    with Client(gk.base_url, gk.admin_key) as vault:
        gid = _credential_grant(vault, gk, "keys", body, {"api_key": API_KEY})
        auth = vault.auth(gid)
        with httpx.Client(auth=auth) as http:
            for _ in range(3):
                r = http.get(cred_api.base_url + prefix + "/v1/charges", params={"limit": "3"})
                assert r.status_code == 200, r.text
        seen = cred_api.seen[-1]
        assert seen.query.get("limit") == ["3"]
        if prefix == "/query":
            assert seen.query["api_key"] == [API_KEY]

        async def via_async() -> int:
            async with AsyncClient(gk.base_url, gk.admin_key) as avault:
                async with httpx.AsyncClient(auth=avault.auth(gid)) as http:
                    r = await http.get(cred_api.base_url + prefix + "/v1/charges")
                    return r.status_code

        import asyncio

        assert asyncio.run(via_async()) == 200
        requests = pytest.importorskip("requests")
        with requests.Session() as session:
            session.auth = vault.requests_auth(gid)
            assert session.get(cred_api.base_url + prefix + "/v1/charges", timeout=10).status_code == 200
        # credentials are read once per adapter, not per request
        issued = [e for e in vault.audit_events.list(grant_id=gid, limit=200).data if e.action == "credentials.issued"]
        assert len(issued) == 3, [e.action for e in issued]


def test_auth_rereads_a_replaced_key_on_401_and_explains_oauth1(gk: Server, cred_api: CredApi) -> None:
    cred_api.keys.update({API_KEY, API_KEY_2})
    body: dict[str, object] = {"provider": "api_key", "api_base_url": cred_api.base_url + "/bearer",
                               "verify_request": {"path": "/v1/balance"}}
    with Client(gk.base_url, gk.admin_key) as vault:
        gid = _credential_grant(vault, gk, "keys", body, {"api_key": API_KEY})
        auth = vault.auth(gid)
        with httpx.Client(auth=auth) as http:
            assert http.get(cred_api.base_url + "/bearer/x").status_code == 200
            # the user rotates the key in the vault; the old one stops working
            assert _credential_grant(vault, gk, "keys", body, {"api_key": API_KEY_2}) == gid
            cred_api.keys.discard(API_KEY)
            r = http.get(cred_api.base_url + "/bearer/x")
            assert r.status_code == 200 and [h.status_code for h in r.history] == [401]
            assert cred_api.seen[-2].status == 401 and cred_api.seen[-1].status == 200
            # a key that no longer works anywhere: one re-read, no retry with the same key
            cred_api.keys.discard(API_KEY_2)
            before = len(cred_api.seen)
            assert http.get(cred_api.base_url + "/bearer/x").status_code == 401
            assert len(cred_api.seen) == before + 1

        # a key that may only read credentials cannot look the stamp up: it is told to pass one
        limited = json.loads(gk.cli("api-keys", "create", "--name", "sdk", "--scope", "credentials:read", "--json").stdout)["key"]
        cred_api.keys.add(API_KEY_2)
        with Client(gk.base_url, limited) as narrow:
            with httpx.Client(auth=narrow.auth(gid)) as http:
                with pytest.raises(Exception, match="stamp="):
                    http.get(cred_api.base_url + "/bearer/x")
            with httpx.Client(auth=narrow.auth(gid, stamp=Stamp())) as http:
                assert http.get(cred_api.base_url + "/bearer/x").status_code == 200

        oauth1_endpoints = {name: f"{cred_api.base_url}/oauth/{name}" for name in
                            ("request_token_url", "authorization_url", "access_token_url")}
        vault.integrations.put("tw", provider="oauth1", client_id="consumer-key", client_secret="consumer-secret",
                               api_base_url=cred_api.base_url, endpoints=oauth1_endpoints)
        with httpx.Client(base_url=gk.base_url, headers={"Authorization": f"Bearer {gk.admin_key}"}) as c:
            r = c.post("/v1/grants", json={"integration_id": "tw", "user_id": "u", "verify": False,
                                           "credentials": {"oauth_token": "tok", "oauth_token_secret": "tok-secret"}})
        assert r.status_code == 201, r.text
        with httpx.Client(auth=vault.auth(r.json()["id"])) as http:
            with pytest.raises(UnsupportedGrantKindError, match="proxy"):
                http.get(cred_api.base_url + "/bearer/x")


def test_auth_mints_client_credentials_tokens(gk: Server, oidc: OidcServer) -> None:
    data = oidc.register_client_metadata(
        [], token_endpoint_auth_method="client_secret_basic", grant_types=["client_credentials"], response_types=[]
    )
    with Client(gk.base_url, gk.admin_key) as vault:
        gid = _credential_grant(vault, gk, "svc", {
            "provider": "client_credentials", "endpoints": {"token_url": oidc.token_endpoint},
            "scopes": ["api:read"], "api_base_url": oidc.api_base_url,
            "client_id": data["client_id"], "client_secret": data["client_secret"],
        }, {})
        with httpx.Client(auth=vault.auth(gid)) as http:
            r = http.get(oidc.api_base_url + "/whoami")
        assert r.status_code == 200 and r.json()["account"] == f"client:{data['client_id']}"
