"""Catalog entries of the minting kinds driven end to end (issue 19: a sample per kind against
the local test servers), on SQLite and PostgreSQL.

The entry supplies what the generic entries leave to the integration: the client
authentication method, the settings, and for ``jwt_bearer`` the assertion's documented
audience, lifetime and fixed claims. Only the token URL and API base URL are pointed at the
local servers (the real oidc-provider for client credentials, ``tests.support.tokenapi`` for
assertions), the way an operator points an entry at a proxy or a sandbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import RSAKey
from tests.integration.test_credential_kinds import (
    assert_nowhere,
    cc_client,
    create_grant,
    post,
    put_integration,
)
from tests.support.gk import Server, require_postgres, running_server
from tests.support.oidc import OidcServer
from tests.support.tokenapi import TokenApi


@pytest.fixture(params=["sqlite", "postgres"])
def gk_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path, worker=False) as server:
        yield server


@pytest.mark.oidc
@pytest.mark.parametrize(
    ("provider", "method", "settings"),
    [
        ("databricks-m2m", "client_secret_basic", {"host": "dbc-a1b2345c-d6e7.cloud.databricks.com"}),
        ("amadeus", "client_secret_post", {}),
    ],
)
def test_client_credentials_catalog_entry(
    gk_api: Server, oidc: OidcServer, provider: str, method: str, settings: dict[str, str]
) -> None:
    client_id, secret = cc_client(oidc, method)
    put_integration(
        gk_api,
        "cat",
        {
            "provider": provider,
            "settings": settings,
            "client_id": client_id,
            "client_secret": secret,
            "scopes": ["api:read"],
            "endpoints": {"token_url": oidc.token_endpoint},
            "api_base_url": oidc.api_base_url,
        },
    )
    # oidc-provider refuses a client that authenticates other than it registered, so a
    # token here means the entry's documented method was used
    r = create_grant(gk_api, "cat", "tenant", {})
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    tok = post(gk_api, f"/v1/grants/{gid}/token")
    assert tok.status_code == 200, tok.text
    with gk_api.client() as c:
        who = c.get(f"/v1/proxy/{gid}/whoami")
    assert who.status_code == 200 and who.json()["account"] == f"client:{client_id}"
    assert_nowhere(gk_api, [secret, tok.json()["access_token"]])


def test_jwt_bearer_catalog_entry_with_its_assertion_shape(gk_api: Server, token_api: TokenApi) -> None:
    """Box: aud is Box's token URL wherever the request goes, exp 45 s after iat,
    box_sub_type fixed, and the client ID and secret in the form (client_secret_post)."""
    key = RSAKey.generate_key(2048, private=True)
    pem = key.as_pem(private=True).decode()
    token_api.keys["pubkey1"] = ("box-client-id", RSAKey.import_key(key.as_pem(private=False)))
    token_api.audience = "https://api.box.com/oauth2/token"
    try:
        put_integration(
            gk_api,
            "box",
            {
                "provider": "box-jwt",
                "client_id": "box-client-id",
                "client_secret": "box-client-secret",
                "endpoints": {"token_url": token_api.token_url},
                "api_base_url": token_api.base_url + "/api",
            },
        )
        r = create_grant(
            gk_api, "box", "t", {"private_key": pem, "issuer": "box-client-id", "key_id": "pubkey1", "subject": "1234567"}
        )
        assert r.status_code == 201, r.text
        claims = token_api.claims_seen[-1]
        assert claims["aud"] == "https://api.box.com/oauth2/token"
        assert claims["exp"] - claims["iat"] == 45
        assert claims["box_sub_type"] == "enterprise" and claims["sub"] == "1234567"
        form = token_api.forms_seen[-1]
        assert form["client_id"] == "box-client-id" and form["client_secret"] == "box-client-secret"
        gid = r.json()["id"]
        tok = post(gk_api, f"/v1/grants/{gid}/token")
        assert tok.status_code == 200, tok.text
        with gk_api.client() as c:
            who = c.get(f"/v1/proxy/{gid}/folders/0")
        assert who.status_code == 200, who.text
        assert_nowhere(gk_api, [line for line in pem.splitlines() if line and not line.startswith("-----")])
    finally:
        token_api.audience = None
