"""``jwt_bearer`` grants (RFC 7523) end to end on SQLite and PostgreSQL, against a local token
endpoint that verifies the assertion with the registered public key (``tests.support.tokenapi``).

The private key never leaves the vault: not in a response (``/credentials`` included), the
log, the audit trail or the database in clear.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey
from tests.integration.test_credential_kinds import (
    assert_nowhere,
    create_grant,
    post,
    put_integration,
)
from tests.support.burst import Answer, parallel_posts
from tests.support.gk import Server, require_postgres, running_server
from tests.support.tokenapi import TokenApi

SCOPE = "https://www.googleapis.com/auth/drive.readonly"


@pytest.fixture(params=["sqlite", "postgres"])
def gk_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path, worker=False) as server:
        yield server


def rsa() -> tuple[str, RSAKey]:
    key = RSAKey.generate_key(2048, private=True)
    return key.as_pem(private=True).decode(), RSAKey.import_key(key.as_pem(private=False))


def ec() -> tuple[str, ECKey]:
    key = ECKey.generate_key("P-256", private=True)
    return key.as_pem(private=True).decode(), ECKey.import_key(key.as_pem(private=False))


def jwt_integration(server: Server, api: TokenApi, iid: str = "sa") -> None:
    put_integration(
        server,
        iid,
        {
            "provider": "jwt_bearer",
            "endpoints": {"token_url": api.token_url},
            "scopes": [SCOPE],
            "api_base_url": api.base_url + "/api",
        },
    )


def pem_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM (what would show if the key leaked anywhere)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_jwt_bearer_rs256_lifecycle(gk_api: Server, token_api: TokenApi) -> None:
    pem, public = rsa()
    issuer = "robot@acme.iam.example.com"
    token_api.keys["k1"] = (issuer, public)
    jwt_integration(gk_api, token_api)

    wrong_pem, _ = rsa()
    bad = create_grant(gk_api, "sa", "tenant", {"private_key": wrong_pem, "issuer": issuer, "key_id": "k1"})
    assert bad.status_code == 422 and bad.json()["code"] == "credentials_rejected", bad.text
    garbage = create_grant(gk_api, "sa", "tenant", {"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----", "issuer": issuer})
    assert garbage.status_code == 422 and garbage.json()["code"] == "invalid_input"

    before = token_api.mints
    r = create_grant(gk_api, "sa", "tenant", {"private_key": pem, "issuer": issuer, "key_id": "k1"})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["has_refresh_token"] is False and grant["scopes"] == [SCOPE]
    assert grant["provider_account_id"] == issuer
    assert token_api.mints == before + 1
    claims = token_api.claims_seen[-1]
    assert claims["iss"] == issuer and claims["sub"] == issuer
    assert claims["aud"] == token_api.token_url
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    assert claims["scope"] == SCOPE and claims["jti"]

    gid = grant["id"]
    tok = post(gk_api, f"/v1/grants/{gid}/token")
    assert tok.status_code == 200, tok.text
    access = tok.json()["access_token"]
    creds = post(gk_api, f"/v1/grants/{gid}/credentials")
    assert creds.json()["type"] == "jwt_bearer" and creds.json()["access_token"] == access
    assert "PRIVATE KEY" not in creds.text and "private_key" not in creds.text
    with gk_api.client() as c:
        who = c.get(f"/v1/proxy/{gid}/drive/v3/files")
    assert who.status_code == 200, who.text
    assert who.json()["who"] == issuer

    # forced: a new assertion, a new token
    forced = post(gk_api, f"/v1/grants/{gid}/token", {"force_refresh": True})
    assert forced.status_code == 200 and forced.json()["access_token"] != access
    assert token_api.mints == before + 2

    with gk_api.client() as c:
        assert c.delete(f"/v1/grants/{gid}").status_code == 200
    assert post(gk_api, f"/v1/grants/{gid}/token").json()["code"] == "grant_revoked"
    assert_nowhere(gk_api, [*pem_lines(pem), access])


def test_google_service_account_json_es256_with_subject(gk_api: Server, token_api: TokenApi) -> None:
    pem, public = ec()
    email = "svc@acme-project.iam.gserviceaccount.com"
    token_api.keys["abc123"] = (email, public)
    jwt_integration(gk_api, token_api, "gsa")
    service_account: dict[str, Any] = {
        "type": "service_account",
        "project_id": "acme-project",
        "private_key_id": "abc123",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        # never followed: the assertion only goes to the integration's token URL
        "token_uri": "http://127.0.0.1:9/evil-token",
    }
    r = create_grant(gk_api, "gsa", "tenant", {"service_account": service_account, "subject": "alice@acme.example"})
    assert r.status_code == 201, r.text
    claims = token_api.claims_seen[-1]
    assert claims["sub"] == "alice@acme.example" and claims["iss"] == email
    assert r.json()["provider_account_id"] == "alice@acme.example"
    with gk_api.client() as c:
        who = c.get(f"/v1/proxy/{r.json()['id']}/admin/directory/v1/users")
    assert who.status_code == 200 and who.json()["who"] == "alice@acme.example"
    assert_nowhere(gk_api, pem_lines(pem))


async def _burst(base: str, key: str, gid: str, n: int) -> list[Answer]:
    return await parallel_posts(f"{base}/v1/grants/{gid}/token", key, {}, n)


def test_expired_jwt_grant_mints_once_for_concurrent_reads(gk_api: Server, token_api: TokenApi) -> None:
    pem, public = rsa()
    token_api.keys["k"] = ("iss@x", public)
    jwt_integration(gk_api, token_api)
    token_api.ttl = 2
    r = create_grant(gk_api, "sa", "t", {"private_key": pem, "issuer": "iss@x", "key_id": "k"})
    assert r.status_code == 201
    time.sleep(2.5)
    token_api.ttl = 3600
    before = token_api.mints
    responses = asyncio.run(_burst(gk_api.base_url, gk_api.admin_key, r.json()["id"], 100))
    assert [x.status_code for x in responses] == [200] * 100
    assert len({x.json()["access_token"] for x in responses}) == 1
    assert token_api.mints == before + 1
