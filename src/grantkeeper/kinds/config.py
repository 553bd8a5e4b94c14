"""Resolve an integration for its kind, and seal or open a grant's credentials.

Sealed like tokens (per-value data key, AAD = environment, ``grants``, grant id and the field
``credentials``): a ciphertext moved to another grant, field or environment does not open.
The AAD carries no token generation on purpose: minting a new access token bumps the grant's
``version`` but leaves the credentials as they are.
"""

from __future__ import annotations

from typing import Any

import orjson

from grantkeeper.integrations import private_key_aad, secret_aad
from grantkeeper.kinds.base import Credentials, KindConfig, KindContext
from grantkeeper.oauth.tokens import ClientCredentials
from grantkeeper.providers.catalog import StampSpec, VerifyRequest
from grantkeeper.runtime import Runtime
from grantkeeper.store.records import GrantRecord, IntegrationRecord
from grantkeeper.vault import Vault, aad_for

__all__ = [
    "context",
    "credentials_aad",
    "kind_config",
    "open_credentials",
    "seal_credentials",
]


def credentials_aad(environment_id: str, grant_id: str) -> bytes:
    return aad_for(environment_id, "grants", grant_id, "credentials")


def seal_credentials(vault: Vault, environment_id: str, grant_id: str, creds: Credentials) -> bytes:
    return vault.seal(orjson.dumps(creds.values), credentials_aad(environment_id, grant_id))


def open_credentials(vault: Vault, rec: GrantRecord) -> Credentials:
    if rec.credentials_ct is None:
        return Credentials({})
    raw: Any = orjson.loads(
        vault.open(rec.credentials_ct, credentials_aad(rec.environment_id, rec.id))
    )
    return Credentials({str(k): str(v) for k, v in raw.items()})


def context(rt: Runtime) -> KindContext:
    return KindContext(
        http=rt.http,
        token_http=rt.token_http,
        timeout=rt.settings.http_timeout,
        allow_private=rt.settings.allow_private_networks,
        now=rt.clock.now,
    )


def kind_config(rt: Runtime, rec: IntegrationRecord) -> KindConfig:
    """The integration as its kind sees it: integration overrides first, then the entry."""
    spec = rt.catalog.get(rec.provider)
    ep = spec.resolve(rec.settings)
    overrides: dict[str, Any] = rec.endpoints or {}
    secret = (
        rt.vault.open_str(rec.client_secret_ct, secret_aad(rec.environment_id, rec.id))
        if rec.client_secret_ct is not None
        else None
    )
    method = overrides.get("token_endpoint_auth_method") or spec.token_endpoint_auth_method
    client = ClientCredentials(rec.client_id, secret, method) if rec.client_id else None
    private_key = (
        rt.vault.open_str(rec.private_key_ct, private_key_aad(rec.environment_id, rec.id))
        if rec.private_key_ct is not None
        else None
    )
    return KindConfig(
        record=rec,
        spec=spec,
        mode=spec.auth_mode,
        fields=spec.fields(),
        stamp=StampSpec.model_validate(rec.stamp) if rec.stamp else spec.stamp,
        verify_request=VerifyRequest.model_validate(rec.verify_request)
        if rec.verify_request
        else spec.verify_request,
        api_base_url=rec.api_base_url or ep.api_base_url,
        token_url=overrides.get("token_url") or ep.token_url,
        authorization_url=overrides.get("authorization_url") or ep.authorization_url,
        request_token_url=overrides.get("request_token_url") or ep.request_token_url,
        access_token_url=overrides.get("access_token_url") or ep.access_token_url,
        revocation_url=overrides.get("revocation_url") or ep.revocation_url,
        client=client,
        scopes=tuple(rec.scopes),
        app_id=rec.app_id,
        private_key=private_key,
        token_params={**spec.token_params, **(rec.token_params or {})},
    )
