"""The OAuth dance end to end: grantkeeper process + the real oidc-provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.support.gk import Server
from tests.support.oidc import AuthorizationOutcome, OidcServer

RETURN_URL = "http://127.0.0.1:9/app/done"


@dataclass
class Integration:
    id: str
    client_id: str
    client_secret: str


def setup_oidc_integration(
    server: Server,
    oidc: OidcServer,
    integration_id: str = "acme",
    *,
    scopes: tuple[str, ...] = ("openid", "offline_access", "api:read"),
    auth_method: str = "client_secret_basic",
    **extra: Any,
) -> Integration:
    client_id, secret = oidc.register_client([server.base_url + "/oauth/callback"], token_endpoint_auth_method=auth_method)
    body: dict[str, Any] = {
        "provider": "oidc",
        "issuer": oidc.issuer,
        "client_id": client_id,
        "client_secret": secret,
        "scopes": list(scopes),
        "return_urls": [RETURN_URL],
        "api_base_url": oidc.api_base_url,
        "endpoints": None,
    }
    body.pop("endpoints")
    if auth_method != "client_secret_basic":
        body["endpoints"] = {
            "authorization_url": oidc.authorization_endpoint,
            "token_url": oidc.token_endpoint,
            "revocation_url": oidc.revocation_endpoint,
            "token_endpoint_auth_method": auth_method,
        }
    body.update(extra)
    with server.client() as c:
        r = c.put(f"/v1/integrations/{integration_id}", json=body)
        assert r.status_code in (200, 201), r.text
    return Integration(integration_id, client_id, secret)


def start_connect(server: Server, integration_id: str, user_id: str, return_to: str = RETURN_URL + "/x") -> dict[str, Any]:
    with server.client() as c:
        r = c.post("/v1/connect/sessions", json={"integration_id": integration_id, "user_id": user_id, "return_to": return_to})
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data


def connect(
    server: Server, oidc: OidcServer, integration_id: str, user_id: str, *, account: str = "alice"
) -> AuthorizationOutcome:
    """Run the whole dance; returns where the user ended up (the app's return_to)."""
    oidc.set_account(account)
    session = start_connect(server, integration_id, user_id)
    return oidc.authorize(session["connect_url"], stop_origin=server.base_url)


def connect_grant(server: Server, oidc: OidcServer, integration_id: str, user_id: str, *, account: str = "alice") -> str:
    outcome = connect(server, oidc, integration_id, user_id, account=account)
    assert outcome.query.get("status") == "success", (outcome.final_url, outcome.responses, outcome.last_response.text[:500])
    return outcome.query["grant_id"]
