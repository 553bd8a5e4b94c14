"""Grants of the non-code kinds: create from ``credentials``, hand them out, stamp, mint.

The HTTP layer and the refresh engine call these functions; each dispatches to the grant's
kind (``grantkeeper.kinds``) and never looks inside one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from grantkeeper import audit, events
from grantkeeper.apikeys import Principal
from grantkeeper.errors import InvalidInput, NoAccessToken, NotFound
from grantkeeper.grants import get_visible, grant_view, open_token, token_columns
from grantkeeper.inputs import ImportGrant
from grantkeeper.integrations import get_or_404
from grantkeeper.kinds import Credentials, Kind, KindConfig, Stamp, kind_for
from grantkeeper.kinds.config import context, kind_config, open_credentials, seal_credentials
from grantkeeper.oauth.tokens import TokenSet
from grantkeeper.providers.catalog import CODE_MODES, MINTING_MODES
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord, IntegrationRecord

__all__ = [
    "create_credential_grant",
    "credentials_payload",
    "grant_kind",
    "has_access_token",
    "is_code_kind",
    "mint_tokens",
    "mints",
    "provider_has_access_token",
    "stamp_for",
]


def grant_kind(rt: Runtime, rec: GrantRecord | IntegrationRecord) -> Kind:
    return kind_for(rt.catalog.get(rec.provider).auth_mode)


def is_code_kind(rt: Runtime, provider: str) -> bool:
    return rt.catalog.get(provider).auth_mode in CODE_MODES


def mints(rt: Runtime, rec: GrantRecord) -> bool:
    """The vault mints this grant's access tokens itself (client credentials, JWT, GitHub App)."""
    return rec.provider in rt.catalog and rt.catalog.get(rec.provider).auth_mode in MINTING_MODES


def has_access_token(rt: Runtime, rec: GrantRecord) -> bool:
    return provider_has_access_token(rt, rec.provider)


def provider_has_access_token(rt: Runtime, provider: str) -> bool:
    return (
        provider not in rt.catalog or kind_for(rt.catalog.get(provider).auth_mode).has_access_token
    )


async def _integration(rt: Runtime, rec: GrantRecord) -> IntegrationRecord:
    async with reading(rt.engine) as conn:
        integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    if integ is None:
        raise NotFound("the grant's integration no longer exists")
    return integ


async def mint_tokens(rt: Runtime, rec: GrantRecord) -> TokenSet:
    """A new access token for a minting grant (called by the refresh engine under its lease).

    Raises ``ProviderUnavailable`` (transient) or ``OAuthErrorResponse`` like a refresh.
    """
    integ = await _integration(rt, rec)
    kind = grant_kind(rt, rec)
    cfg = kind_config(rt, integ)
    return await kind.mint(context(rt), cfg, open_credentials(rt.vault, rec))


def stamp_for(
    rt: Runtime,
    rec: GrantRecord,
    cfg: KindConfig,
    access_token: str | None,
    *,
    method: str,
    url: str,
    body: bytes = b"",
    content_type: str | None = None,
) -> Stamp:
    """How one proxied call carries this grant's credential."""
    kind = kind_for(cfg.mode)
    creds = open_credentials(rt.vault, rec) if rec.credentials_ct is not None else Credentials({})
    return kind.stamp(
        cfg, creds, access_token, method=method, url=url, body=body, content_type=content_type
    )


async def create_credential_grant(
    rt: Runtime, principal: Principal, body: ImportGrant
) -> GrantRecord:
    """``POST /v1/grants`` with ``credentials``: parse, prove (``verify``), seal, save.

    The same user, integration and provider account again updates the existing grant.
    """
    principal.require_integration(body.integration_id)
    async with reading(rt.engine) as conn:
        integ = await get_or_404(conn, principal.environment_id, body.integration_id)
    spec = rt.catalog.get(integ.provider)
    kind = kind_for(spec.auth_mode)
    if body.refresh_token is not None or body.access_token is not None:
        raise InvalidInput(
            f"{spec.auth_mode} grants are created from 'credentials', not from tokens"
        )
    cfg = kind_config(rt, integ)
    creds = kind.parse(cfg, body.credentials or {})
    tokens = await kind.verify(context(rt), cfg, creds) if body.verify else None
    account_id = (body.provider_account_id or kind.account_id(cfg, creds))[:255]
    scopes = kind.scopes(cfg, body.credentials or {})
    async with rt.engine.begin() as conn:
        return await save_credentials(
            conn,
            rt,
            integ,
            kind,
            user_id=body.user_id,
            provider_account_id=account_id,
            creds=creds,
            tokens=tokens,
            scopes=scopes,
            actor=principal.actor,
            via="credentials",
        )


async def save_credentials(
    conn: Any,
    rt: Runtime,
    integ: IntegrationRecord,
    kind: Kind,
    *,
    user_id: str,
    provider_account_id: str,
    creds: Credentials,
    tokens: TokenSet | None,
    scopes: tuple[str, ...],
    actor: str,
    via: str,
) -> GrantRecord:
    """Insert or update the grant in the caller's transaction; emits the event, audits."""
    now = rt.clock.now()
    spec = rt.catalog.get(integ.provider)
    env = integ.environment_id
    existing = await store.find_for_user(conn, env, integ.id, user_id, provider_account_id)
    old = existing[0] if existing else None
    grant_id = old.id if old is not None else str(uuid.uuid4())
    version = old.version + 1 if old is not None else 1
    values: dict[str, Any] = {
        "credentials_ct": seal_credentials(rt.vault, env, grant_id, creds),
        "access_token_ct": None,
        "refresh_token_ct": None,
        "id_token_ct": None,
        "token_type": "Bearer",
        "access_token_expires_at": None,
        "scopes": list(scopes),
        "version": version,
        "refresh_due_at": None,
        "token_extra": {},
        "api_base_url": None,
        "updated_at": now,
    }
    if tokens is not None:
        stored = token_columns(
            rt,
            spec,
            environment_id=env,
            grant_id=grant_id,
            version=version,
            tokens=tokens,
            previous_refresh_token=None,
            previous_scopes=None,
            requested_scopes=scopes or None,
            now=now,
        )
        values.update(stored.columns)
        values["refresh_token_ct"] = None  # minting kinds never keep one
    elif kind.mints:
        values["refresh_due_at"] = now  # nothing minted yet: the worker (or first read) mints
    values.update(
        status="active",
        provider_account_id=provider_account_id,
        last_refreshed_at=now if tokens is not None else None,
        lease_owner=None,
        lease_until=None,
        refresh_attempts=0,
        retry_at=None,
        failure_code=None,
        failure_description=None,
        failed_at=None,
        revoked_at=None,
    )
    if old is not None:
        ok = await store.update_fenced(conn, env, old.id, old.version, values)
        if not ok:
            raise NotFound("the grant changed meanwhile; retry")
        event = "grant.recovered" if old.status in ("invalid", "revoked") else "grant.updated"
    else:
        values.update(
            id=grant_id,
            environment_id=env,
            integration_id=integ.id,
            provider=spec.name,
            user_id=user_id,
            created_via=via,
            created_at=now,
        )
        await store.insert_grant(conn, values)
        event = "grant.created"
    rec = await store.get(conn, env, grant_id)
    assert rec is not None
    await events.emit(conn, environment_id=env, event_type=event, grant=grant_view(rec), now=now)
    await audit.record(
        conn,
        environment_id=env,
        actor=actor,
        action=event,
        now=now,
        grant_id=grant_id,
        integration_id=integ.id,
        via=via,
        auth_mode=spec.auth_mode,
        verified=tokens is not None or via == "connect_form",
    )
    return rec


def credentials_payload(
    rt: Runtime, rec: GrantRecord, cfg: KindConfig, token: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The body of ``POST /credentials``: ``{"type": auth_mode, ...}``.

    Token kinds: the fields of ``/token`` (``token`` is that payload). Others: what the kind
    says (never a private key, client secret or refresh token).
    """
    kind = kind_for(cfg.mode)
    if kind.has_access_token:
        if token is None:
            raise NoAccessToken("no access token is available for this grant")
        return {"type": cfg.mode, **token}
    creds = open_credentials(rt.vault, rec)
    return {"type": cfg.mode, **kind.credentials_view(cfg, creds)}


async def visible_grant(rt: Runtime, principal: Principal, grant_id: str) -> GrantRecord:
    async with reading(rt.engine) as conn:
        return await get_visible(
            conn, principal.environment_id, grant_id, principal.integration_ids
        )


def access_token_of(rt: Runtime, rec: GrantRecord) -> str | None:
    return open_token(rt.vault, rec, "access_token")
