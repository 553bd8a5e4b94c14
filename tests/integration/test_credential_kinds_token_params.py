"""``client_credentials`` with ``token_params``: the extra token-request parameters an API
needs (Auth0's and Box's ``audience``, RFC 8707 ``resource``), from the catalog entry and
the integration, against the real oidc-provider with resource indicators on: it issues a
JWT access token whose ``aud`` is the ``resource`` asked for. Parameters the vault sets
itself (``grant_type``, ``client_id``, ``scope`` ...) cannot be overridden.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_credential_kinds import create_grant, post
from tests.support.gk import Server, require_postgres, running_server
from tests.support.oidc import OidcServer

RESOURCE = "https://api.acme.example/"


@pytest.fixture(scope="module")
def ri_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    server = OidcServer(log_path=tmp_path_factory.mktemp("ri_as") / "server.log", extra_args=("--resource-indicators",))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def gk_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path, worker=False) as server:
        yield server


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return data


def test_client_credentials_token_params_reach_the_token_request(gk_api: Server, ri_as: OidcServer) -> None:
    client = ri_as.register_client_metadata(
        [], token_endpoint_auth_method="client_secret_basic", grant_types=["client_credentials"], response_types=[]
    )
    body: dict[str, Any] = {
        "provider": "client_credentials",
        "endpoints": {"token_url": ri_as.token_endpoint},
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
        "token_params": {"resource": RESOURCE},
    }
    with gk_api.client() as c:
        for reserved in ("grant_type", "client_id", "Client_Secret", "scope", "assertion"):
            r = c.put("/v1/integrations/m2m", json={**body, "token_params": {reserved: "x"}})
            assert r.status_code == 422, (reserved, r.text)
            assert reserved in r.text
        r = c.put("/v1/integrations/m2m", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["token_params"] == {"resource": RESOURCE}
    r = create_grant(gk_api, "m2m", "svc", {})
    assert r.status_code == 201, r.text
    assert ri_as.stats()["token_requests"][-1]["resource"] == RESOURCE
    tok = post(gk_api, f"/v1/grants/{r.json()['id']}/token", {"force_refresh": True})
    assert tok.status_code == 200, tok.text
    assert ri_as.stats()["token_requests"][-1]["resource"] == RESOURCE
    assert claims(tok.json()["access_token"])["aud"] == RESOURCE
