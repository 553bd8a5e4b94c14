"""Credential kinds end to end (CONTRACT "Credential kinds"): real grantkeeper processes on
SQLite and PostgreSQL, a local API that checks credentials the way providers document them
(``tests.support.credapi``) and the real oidc-provider issuing client-credentials tokens.

Per kind: create (API), verify good and bad (422 ``credentials_rejected``), read (``/token``
or ``/credentials``), a proxied call the local server accepts, delete; and no secret in a
response (beyond ``/credentials``), the log, the audit trail or the database in clear.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.burst import Answer, parallel_posts
from tests.support.credapi import CredApi
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer

STRIPE_KEY = "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc"
OTHER_KEY = "sk_test_" + "WrongWrongWrongWrong0000"
TWILIO_SID = "AC" + "0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "twilio-auth-token-s3cret-value"


# ---------------------------------------------------------------- helpers


def put_integration(server: Server, iid: str, body: dict[str, Any]) -> dict[str, Any]:
    with server.client() as c:
        r = c.put(f"/v1/integrations/{iid}", json=body)
    assert r.status_code in (200, 201), r.text
    data: dict[str, Any] = r.json()
    return data


def create_grant(server: Server, iid: str, user: str, credentials: dict[str, Any], *, verify: bool = True) -> httpx.Response:
    with server.client() as c:
        return c.post(
            "/v1/grants",
            json={"integration_id": iid, "user_id": user, "credentials": credentials, "verify": verify},
        )


def post(server: Server, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    with server.client() as c:
        return c.post(path, json=body if body is not None else {})


def database_dump(server: Server) -> bytes:
    """Everything the database holds, as bytes: the SQLite file(s), or a pg_dump."""
    url = server.db.url
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    return subprocess.run(["pg_dump", "--data-only", dsn], check=True, capture_output=True, timeout=60).stdout


def audit_text(server: Server) -> str:
    with server.client() as c:
        r = c.get("/v1/audit-events", params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.text


def assert_nowhere(server: Server, secrets: list[str]) -> None:
    """No secret in the database (clear), the log or the audit trail."""
    dump = database_dump(server)
    log = server.log_text()
    audit = audit_text(server)
    for s in secrets:
        for form in {s, base64.b64encode(s.encode()).decode()}:
            assert form.encode() not in dump, "a secret is stored in clear"
            assert form not in log, "a secret is in the log"
            assert form not in audit, "a secret is in the audit trail"


@pytest.fixture(params=["sqlite", "postgres"])
def gk_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """API and worker, on each backend."""
    from tests.support.gk import require_postgres

    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path) as server:
        yield server


# ---------------------------------------------------------------- catalog


def test_providers_filter_by_kind_and_show_fields(gk_api: Server) -> None:
    with gk_api.client() as c:
        r = c.get("/v1/providers", params={"auth_mode": "api_key"})
        assert r.status_code == 200
        names = {p["name"] for p in r.json()["data"]}
        assert {"api_key", "stripe-api-key", "openai"} <= names
        assert all(p["auth_mode"] == "api_key" for p in r.json()["data"])
        assert c.get("/v1/providers", params={"auth_mode": "saml"}).status_code == 422
        twilio = c.get("/v1/providers/twilio").json()
        assert twilio["auth_mode"] == "basic"
        assert twilio["stamp"]["in"] == "basic"
        fields = {f["name"]: f for f in twilio["credential_fields"]}
        assert fields["username"]["secret"] is False and fields["password"]["secret"] is True
        generic = c.get("/v1/providers/basic").json()
        assert [f["name"] for f in generic["credential_fields"]] == ["username", "password"]
        for name in ("api_key", "basic", "client_credentials", "jwt_bearer", "oauth1", "oidc", "oauth2"):
            assert c.get(f"/v1/providers/{name}").json()["auth_mode"] == name


# ---------------------------------------------------------------- api_key


STAMPS = {
    "bearer": ("/bearer", None),
    "header": ("/header", {"in": "header", "name": "X-API-Key", "template": "{api_key}"}),
    "query": ("/query", {"in": "query", "name": "api_key"}),
}


@pytest.mark.parametrize("how", sorted(STAMPS))
def test_api_key_grant_lifecycle(gk_api: Server, cred_api: CredApi, how: str) -> None:
    prefix, stamp = STAMPS[how]
    cred_api.keys.add(STRIPE_KEY)
    body: dict[str, Any] = {
        "provider": "api_key",
        "api_base_url": cred_api.base_url + prefix,
        "verify_request": {"method": "GET", "path": "/v1/balance", "expect_status": 200},
    }
    if stamp:
        body["stamp"] = stamp
    integ = put_integration(gk_api, "keys", body)
    assert integ["auth_mode"] == "api_key" and integ["client_id"] is None

    bad = create_grant(gk_api, "keys", "u1", {"api_key": OTHER_KEY})
    assert bad.status_code == 422, bad.text
    assert bad.json()["code"] == "credentials_rejected"
    assert OTHER_KEY not in bad.text
    with gk_api.client() as c:
        assert c.get("/v1/grants", params={"integration_id": "keys"}).json()["data"] == []

    r = create_grant(gk_api, "keys", "u1", {"api_key": STRIPE_KEY})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert STRIPE_KEY not in r.text
    assert grant["status"] == "active" and grant["has_refresh_token"] is False
    gid = grant["id"]
    assert cred_api.seen[-1].status == 200 and cred_api.seen[-1].path == f"{prefix}/v1/balance"

    tok = post(gk_api, f"/v1/grants/{gid}/token")
    assert tok.status_code == 409 and tok.json()["code"] == "no_access_token"

    creds = post(gk_api, f"/v1/grants/{gid}/credentials")
    assert creds.status_code == 200, creds.text
    assert creds.json() == {"type": "api_key", "api_key": STRIPE_KEY}
    assert creds.headers["cache-control"] == "no-store"

    with gk_api.client() as c:
        proxied = c.get(f"/v1/proxy/{gid}/v1/charges", params={"limit": "3"})
    assert proxied.status_code == 200, proxied.text
    assert proxied.json()["ok"] is True
    last = cred_api.seen[-1]
    assert last.path == f"{prefix}/v1/charges" and last.query.get("limit") == ["3"]
    assert gk_api.admin_key.split("_")[-1] not in str(last.headers)

    # the same user and integration again: the grant is updated, not duplicated
    again = create_grant(gk_api, "keys", "u1", {"api_key": STRIPE_KEY})
    assert again.status_code == 201 and again.json()["id"] == gid

    audit = audit_text(gk_api)
    assert "credentials.issued" in audit
    with gk_api.client() as c:
        d = c.delete(f"/v1/grants/{gid}")
    assert d.status_code == 200, d.text
    assert d.json()["status"] == "revoked" and d.json()["provider_revocation"] == "unsupported"
    gone = post(gk_api, f"/v1/grants/{gid}/credentials")
    assert gone.status_code == 409 and gone.json()["code"] == "grant_revoked"
    assert_nowhere(gk_api, [STRIPE_KEY, OTHER_KEY])


def test_api_key_catalog_entry_and_input_checks(gk_api: Server, cred_api: CredApi) -> None:
    """A catalog entry (Stripe) with its own stamp, pattern and verification request."""
    cred_api.keys.add(STRIPE_KEY)
    put_integration(gk_api, "stripe", {"provider": "stripe-api-key", "api_base_url": cred_api.base_url + "/bearer"})
    malformed = create_grant(gk_api, "stripe", "u1", {"api_key": "pk_test_not_a_secret_key"})
    assert malformed.status_code == 422 and malformed.json()["code"] == "invalid_input"
    assert "pk_test_not_a_secret_key" not in malformed.text
    unknown = create_grant(gk_api, "stripe", "u1", {"api_key": STRIPE_KEY, "is_admin": "yes"})
    assert unknown.status_code == 422
    missing = create_grant(gk_api, "stripe", "u1", {})
    assert missing.status_code == 422
    ok = create_grant(gk_api, "stripe", "u1", {"api_key": STRIPE_KEY})
    assert ok.status_code == 201, ok.text
    # without verify nothing is sent to the provider
    before = len(cred_api.seen)
    unverified = create_grant(gk_api, "stripe", "u2", {"api_key": OTHER_KEY}, verify=False)
    assert unverified.status_code == 201 and len(cred_api.seen) == before
    with gk_api.client() as c:
        r = c.get(f"/v1/proxy/{unverified.json()['id']}/v1/balance")
    assert r.status_code == 401  # the provider's own answer, passed through


# ---------------------------------------------------------------- basic


def test_basic_grant_lifecycle(gk_api: Server, cred_api: CredApi) -> None:
    cred_api.logins.add((TWILIO_SID, TWILIO_TOKEN))
    put_integration(gk_api, "twilio", {"provider": "twilio", "api_base_url": cred_api.base_url + "/basic"})
    bad = create_grant(gk_api, "twilio", "u1", {"username": TWILIO_SID, "password": "nope-" + TWILIO_TOKEN})
    assert bad.status_code == 422 and bad.json()["code"] == "credentials_rejected"
    r = create_grant(gk_api, "twilio", "u1", {"username": TWILIO_SID, "password": TWILIO_TOKEN})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    assert cred_api.seen[-1].path == "/basic/2010-04-01/Accounts.json" and cred_api.seen[-1].status == 200
    assert post(gk_api, f"/v1/grants/{gid}/token").json()["code"] == "no_access_token"
    creds = post(gk_api, f"/v1/grants/{gid}/credentials")
    assert creds.json() == {"type": "basic", "username": TWILIO_SID, "password": TWILIO_TOKEN}
    # the SDK: vault.credentials(grant_id)
    from grantkeeper.client import Client

    with Client(gk_api.base_url, gk_api.admin_key) as vault:
        sdk = vault.credentials(gid)
        assert sdk.type == "basic" and sdk["password"] == TWILIO_TOKEN
        expected = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
        assert sdk.authorization == f"Basic {expected}"
        assert TWILIO_TOKEN not in repr(sdk)
        keyed = vault.grants.credentials(gid)
        assert keyed == sdk
    with gk_api.client() as c:
        proxied = c.post(f"/v1/proxy/{gid}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json", data={"To": "+1"})
    assert proxied.status_code == 200, proxied.text
    assert proxied.json()["who"] == TWILIO_SID
    with gk_api.client() as c:
        assert c.delete(f"/v1/grants/{gid}").status_code == 200
    assert_nowhere(gk_api, [TWILIO_TOKEN, f"{TWILIO_SID}:{TWILIO_TOKEN}"])


def test_generic_basic_with_template_and_integration_checks(gk_api: Server, cred_api: CredApi) -> None:
    """Zendesk-style ``{email}/token:{api_token}`` needs declared fields: the generic basic entry
    only knows username/password, so an unknown placeholder is refused at PUT."""
    with gk_api.client() as c:
        r = c.put(
            "/v1/integrations/zd",
            json={"provider": "basic", "api_base_url": cred_api.base_url + "/basic", "stamp": {"in": "basic", "template": "{email}/token:{api_token}"}},
        )
        assert r.status_code == 422 and "placeholders" in r.json()["detail"]
        r = c.put("/v1/integrations/zd", json={"provider": "basic", "verify_request": {"path": "/me"}})
        assert r.status_code == 422  # a verification request needs an API base URL
        r = c.put("/v1/integrations/cc", json={"provider": "client_credentials"})
        assert r.status_code == 422 and "token_url" in r.json()["detail"]
    cred_api.logins.add(("alice@example.com/token", "zd-api-token-xyz"))
    put_integration(
        gk_api,
        "zd",
        {"provider": "basic", "api_base_url": cred_api.base_url + "/basic", "stamp": {"in": "basic", "template": "{username}/token:{password}"}, "verify_request": {"path": "/api/v2/users/me.json"}},
    )
    r = create_grant(gk_api, "zd", "u1", {"username": "alice@example.com", "password": "zd-api-token-xyz"})
    assert r.status_code == 201, r.text


# ---------------------------------------------------------------- client_credentials


def cc_client(oidc: OidcServer, auth_method: str = "client_secret_basic") -> tuple[str, str]:
    data = oidc.register_client_metadata(
        [], token_endpoint_auth_method=auth_method, grant_types=["client_credentials"], response_types=[]
    )
    return str(data["client_id"]), str(data["client_secret"])


def cc_integration(server: Server, oidc: OidcServer, iid: str = "svc", *, own_client: bool = True) -> tuple[str, str]:
    client_id, secret = cc_client(oidc)
    body: dict[str, Any] = {
        "provider": "client_credentials",
        "endpoints": {"token_url": oidc.token_endpoint},
        "scopes": ["api:read"],
        "api_base_url": oidc.api_base_url,
    }
    if own_client:
        body.update(client_id=client_id, client_secret=secret)
    put_integration(server, iid, body)
    return client_id, secret


def mints(oidc: OidcServer) -> int:
    return int(oidc.stats()["token"]["client_credentials"])


@pytest.mark.oidc
def test_client_credentials_grant_lifecycle(gk_api: Server, oidc: OidcServer) -> None:
    client_id, secret = cc_integration(gk_api, oidc)
    before = mints(oidc)
    r = create_grant(gk_api, "svc", "tenant-1", {})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["has_refresh_token"] is False and grant["access_token_expires_at"]
    assert grant["scopes"] == ["api:read"]
    assert mints(oidc) == before + 1
    gid = grant["id"]
    tok = post(gk_api, f"/v1/grants/{gid}/token")
    assert tok.status_code == 200, tok.text
    assert tok.headers["cache-control"] == "no-store"
    access = tok.json()["access_token"]
    assert "refresh_token" not in tok.text
    assert mints(oidc) == before + 1  # served from the vault, not minted again
    creds = post(gk_api, f"/v1/grants/{gid}/credentials")
    assert creds.status_code == 200
    assert creds.json()["type"] == "client_credentials" and creds.json()["access_token"] == access
    assert secret not in creds.text
    with gk_api.client() as c:
        who = c.get(f"/v1/proxy/{gid}/whoami")
    assert who.status_code == 200, who.text
    assert who.json()["account"] == f"client:{client_id}"
    with gk_api.client() as c:
        assert c.delete(f"/v1/grants/{gid}").status_code == 200
    assert post(gk_api, f"/v1/grants/{gid}/token").json()["code"] == "grant_revoked"
    assert_nowhere(gk_api, [secret, access])


@pytest.mark.oidc
def test_client_credentials_per_customer_client(gk_api: Server, oidc: OidcServer) -> None:
    cc_integration(gk_api, oidc, "percust", own_client=False)
    client_id, secret = cc_client(oidc)
    with gk_api.client() as c:
        # without a client of its own the integration needs one per grant
        r = c.post("/v1/grants", json={"integration_id": "percust", "user_id": "t", "credentials": {}})
        assert r.status_code == 422
    bad = create_grant(gk_api, "percust", "t1", {"client_id": client_id, "client_secret": secret + "x"})
    assert bad.status_code == 422 and bad.json()["code"] == "credentials_rejected", bad.text
    ok = create_grant(gk_api, "percust", "t1", {"client_id": client_id, "client_secret": secret, "scopes": ["api:read"]})
    assert ok.status_code == 201, ok.text
    assert ok.json()["provider_account_id"] == client_id
    tok = post(gk_api, f"/v1/grants/{ok.json()['id']}/token")
    assert tok.status_code == 200
    assert_nowhere(gk_api, [secret, tok.json()["access_token"]])


async def _burst(base: str, key: str, gid: str, n: int) -> list[Answer]:
    return await parallel_posts(f"{base}/v1/grants/{gid}/token", key, {}, n)


@pytest.mark.oidc
@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_client_credentials_expired_200_reads_mint_once(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    with running_server(backend, tmp_path, worker=False) as server:
        oidc.set_ttl(ClientCredentials=2)
        cc_integration(server, oidc)
        r = create_grant(server, "svc", "tenant", {})
        assert r.status_code == 201, r.text
        gid = r.json()["id"]
        time.sleep(2.5)
        oidc.set_ttl(ClientCredentials=600)
        before = mints(oidc)
        responses = asyncio.run(_burst(server.base_url, server.admin_key, gid, 200))
        assert [x.status_code for x in responses] == [200] * 200
        assert len({x.json()["access_token"] for x in responses}) == 1
        assert mints(oidc) == before + 1


@pytest.mark.oidc
def test_client_credentials_minted_ahead_of_expiry_by_the_worker(gk_api: Server, oidc: OidcServer) -> None:
    oidc.set_ttl(ClientCredentials=4)
    try:
        cc_integration(gk_api, oidc)
        r = create_grant(gk_api, "svc", "tenant", {})
        assert r.status_code == 201
        first = r.json()["access_token_expires_at"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with gk_api.client() as c:
                now = c.get(f"/v1/grants/{r.json()['id']}").json()
            if now["access_token_expires_at"] != first:
                break
            time.sleep(0.3)
        assert now["access_token_expires_at"] != first, "the worker did not mint ahead of expiry"
        assert now["has_refresh_token"] is False
    finally:
        oidc.set_ttl(ClientCredentials=600)
