"""Bring your own authorization: a grant from an existing refresh token.

With ``verify`` the token is used once and whatever comes back is stored,
rotated refresh token included (at a rotating provider the old one is now
spent, so storing the response is the only safe outcome).
"""

from __future__ import annotations

from grantkeeper.apikeys import Principal
from grantkeeper.clock import parse_iso
from grantkeeper.errors import (
    IntegrationMisconfigured,
    InvalidInput,
    ProviderRejected,
    RefreshTokenRejected,
)
from grantkeeper.grants import save_connected
from grantkeeper.inputs import ImportGrant
from grantkeeper.integrations import get_or_404, resolve
from grantkeeper.oauth.tokens import OAuthErrorResponse, TokenSet, token_request
from grantkeeper.providers.quirks import (
    apply_refresh_request,
    apply_token_response,
    resolve_account_id,
)
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as grant_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord

__all__ = ["import_grant"]


async def import_grant(rt: Runtime, principal: Principal, body: ImportGrant) -> GrantRecord:
    principal.require_integration(body.integration_id)
    if body.refresh_token is None:
        raise InvalidInput("refresh_token is required to import an authorization-code grant")
    refresh_token = body.refresh_token
    async with reading(rt.engine) as conn:
        integ = await get_or_404(conn, principal.environment_id, body.integration_id)
    resolved = await resolve(rt, integ)
    spec = resolved.spec
    now = rt.clock.now()
    account_id = body.provider_account_id or ""
    if body.verify:
        params = apply_refresh_request(
            spec, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        if resolved.resource:
            params["resource"] = resolved.resource
        try:
            tokens = await token_request(
                rt.token_http,
                resolved.token_url,
                resolved.client,
                params,
                timeout=rt.settings.http_timeout,
                normalise=lambda b: apply_token_response(spec, b),
            )
        except OAuthErrorResponse as exc:
            if exc.kind == "integration":
                raise IntegrationMisconfigured(
                    f"the provider refuses the integration's client ({exc.error})"
                ) from None
            if exc.permanent:
                raise RefreshTokenRejected(
                    f"the provider refused the refresh token ({exc.error})"
                ) from None
            raise ProviderRejected(f"the provider rejected the request ({exc.error})") from None
        if tokens.refresh_token is None:
            tokens = TokenSet(
                access_token=tokens.access_token,
                token_type=tokens.token_type,
                refresh_token=refresh_token,
                expires_in=tokens.expires_in,
                scope=tokens.scope,
                id_token=tokens.id_token,
                extra=tokens.extra,
                raw=tokens.raw,
            )
        if not account_id and spec.account_id.source == "token_response":
            account_id = resolve_account_id(spec, tokens.raw, None, None) or ""
    else:
        expires_in = None
        if body.expires_at is not None:
            try:
                expires_in = parse_iso(body.expires_at) - now
            except ValueError:
                raise InvalidInput("expires_at must be an ISO 8601 timestamp") from None
        tokens = TokenSet(
            # without a verified access token the grant refreshes on first use
            access_token=body.access_token or "",
            token_type="Bearer",
            refresh_token=refresh_token,
            expires_in=expires_in if body.access_token else None,
            scope=tuple(body.scopes) if body.scopes is not None else None,
            id_token=None,
        )
    async with rt.engine.begin() as conn:
        rec, _ = await save_connected(
            conn,
            rt,
            spec,
            environment_id=principal.environment_id,
            integration_id=integ.id,
            user_id=body.user_id,
            provider_account_id=account_id[:255],
            tokens=tokens,
            requested_scopes=tuple(body.scopes)
            if body.scopes is not None
            else tuple(integ.scopes) or None,
            id_token_exp=None,
            actor=principal.actor,
            via="import",
        )
        if not tokens.access_token:
            # nothing to serve yet: let the worker (or the first read) refresh at once
            await grant_store.update_grant(
                conn, rec.environment_id, rec.id, {"refresh_due_at": now}
            )
    return rec
