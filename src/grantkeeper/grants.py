"""Grants: one end user's authorization of one integration.

Writing tokens always goes through ``token_columns`` so every ciphertext is
bound to (environment, grant, field, version).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper import audit, events
from grantkeeper.clock import iso
from grantkeeper.errors import Conflict, NotFound
from grantkeeper.oauth.tokens import TokenSet
from grantkeeper.providers import ProviderSpec
from grantkeeper.providers.catalog import MINTING_MODES
from grantkeeper.providers.quirks import resolve_api_base_url
from grantkeeper.refresh.policy import due_at
from grantkeeper.runtime import Runtime
from grantkeeper.signals.expiry import expiry_columns, keepalive_due, refresh_token_expiry
from grantkeeper.store import grants as store
from grantkeeper.store.records import GrantRecord
from grantkeeper.vault import Vault, aad_for

__all__ = [
    "StoredTokens",
    "is_grant_id",
    "get_visible",
    "grant_view",
    "open_token",
    "save_connected",
    "token_aad",
    "token_columns",
]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_grant_id(value: str) -> bool:
    """Grant ids are lowercase UUIDs; anything else can match nothing (and never reaches SQL)."""
    return len(value) == 36 and _UUID.fullmatch(value) is not None


def token_aad(environment_id: str, grant_id: str, field: str, version: int) -> bytes:
    return aad_for(environment_id, "grants", grant_id, field, version)


def open_token(vault: Vault, rec: GrantRecord, field: str) -> str | None:
    blob: bytes | None = getattr(rec, f"{field}_ct")
    if blob is None:
        return None
    return vault.open_str(blob, token_aad(rec.environment_id, rec.id, field, rec.version))


def grant_view(rec: GrantRecord) -> dict[str, Any]:
    """The contract's grant object. Never a token."""
    view: dict[str, Any] = {
        "id": rec.id,
        "integration_id": rec.integration_id,
        "provider": rec.provider,
        "user_id": rec.user_id,
        "provider_account_id": rec.provider_account_id or None,
        "status": rec.status,
        "scopes": list(rec.scopes),
        "access_token_expires_at": iso(rec.access_token_expires_at),
        "has_refresh_token": rec.refresh_token_ct is not None,
        "last_refreshed_at": iso(rec.last_refreshed_at),
        "refresh_token_expires_at": iso(rec.refresh_token_expires_at),
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
        "failure": None,
    }
    if rec.failure_code is not None:
        view["failure"] = {
            "code": rec.failure_code,
            "description": rec.failure_description,
            "at": iso(rec.failed_at),
        }
    return view


async def get_visible(
    conn: AsyncConnection,
    environment_id: str,
    grant_id: str,
    integration_ids: frozenset[str] | None,
) -> GrantRecord:
    """A grant of this environment the caller may see; anything else is a plain 404."""
    rec = await store.get(conn, environment_id, grant_id) if is_grant_id(grant_id) else None
    if rec is None or (integration_ids is not None and rec.integration_id not in integration_ids):
        raise NotFound("no such grant")
    return rec


@dataclass(frozen=True, slots=True)
class StoredTokens:
    """What to write after a token response: ciphertexts, expiry, scopes, due time."""

    columns: dict[str, Any]
    expires_at: float | None


def token_columns(
    rt: Runtime,
    spec: ProviderSpec,
    *,
    environment_id: str,
    grant_id: str,
    version: int,
    tokens: TokenSet,
    previous_refresh_token: str | None,
    previous_scopes: tuple[str, ...] | None,
    requested_scopes: tuple[str, ...] | None,
    id_token_exp: float | None = None,
    fresh_consent: bool = False,
    now: float,
) -> StoredTokens:
    """Seal a token response for generation ``version``.

    A response without ``refresh_token`` keeps the previous one (RFC 6749 6);
    without ``scope`` the granted scopes are those previously granted, else
    those requested (RFC 6749 5.1: omitted means "as requested"). The refresh token's
    own end is taken from the response or the catalog (``signals.expiry``);
    ``fresh_consent`` says the response comes from the user's authorization.
    """
    v = rt.vault
    refresh_token = tokens.refresh_token or previous_refresh_token
    if not tokens.access_token:
        expires_at: float | None = None
    elif tokens.expires_in is not None:
        expires_at = now + tokens.expires_in
    elif id_token_exp is not None:
        expires_at = id_token_exp
    elif (
        spec.refresh.default_access_token_lifetime is not None and spec.refresh.access_tokens_expire
    ):
        expires_at = now + spec.refresh.default_access_token_lifetime
    else:
        expires_at = None
    scopes = (
        tokens.scope if tokens.scope is not None else (previous_scopes or requested_scopes or ())
    )
    s = rt.settings
    due = due_at(
        now=now,
        expires_at=expires_at,
        # minting kinds (client credentials, JWT bearer, GitHub App) mint ahead of expiry
        has_refresh_token=(refresh_token is not None and spec.refresh.supported)
        or spec.auth_mode in MINTING_MODES,
        margin=s.refresh_margin,
        jitter=s.refresh_jitter,
        idle_expiry=spec.refresh.idle_expiry,
        idle_fraction=s.idle_refresh_fraction,
    )
    rt_expiry = (
        refresh_token_expiry(
            spec,
            raw=tokens.raw,
            new_refresh_token=tokens.refresh_token,
            previous_refresh_token=previous_refresh_token,
            fresh_consent=fresh_consent,
            now=now,
        )
        if refresh_token is not None
        else None
    )
    keepalive = keepalive_due(rt_expiry, now=now, fraction=s.idle_refresh_fraction)
    if keepalive is not None and spec.refresh.supported:
        due = keepalive if due is None else min(due, keepalive)

    def seal(field: str, value: str | None) -> bytes | None:
        if value is None:
            return None
        return v.seal(value, token_aad(environment_id, grant_id, field, version))

    columns = {
        # an import without an access token stores none: the first read refreshes
        "access_token_ct": seal("access_token", tokens.access_token or None),
        "refresh_token_ct": seal("refresh_token", refresh_token),
        "id_token_ct": seal("id_token", tokens.id_token),
        "token_type": tokens.token_type[:40],
        "access_token_expires_at": expires_at,
        "scopes": list(scopes),
        "version": version,
        "refresh_due_at": due,
        "token_extra": tokens.extra,
        "api_base_url": resolve_api_base_url(spec, tokens.extra, None),
        "updated_at": now,
    }
    columns.update(expiry_columns(rt_expiry))
    return StoredTokens(columns=columns, expires_at=expires_at)


async def save_connected(
    conn: AsyncConnection,
    rt: Runtime,
    spec: ProviderSpec,
    *,
    environment_id: str,
    integration_id: str,
    user_id: str,
    provider_account_id: str,
    tokens: TokenSet,
    requested_scopes: tuple[str, ...] | None,
    id_token_exp: float | None,
    actor: str,
    via: str,
    prefer_grant_id: str | None = None,
) -> tuple[GrantRecord, str]:
    """Create the grant, or update the user's existing grant for the same provider account.

    Returns the grant and the event emitted (``grant.created``, ``grant.updated``
    or ``grant.recovered``). The caller owns the transaction.
    """
    now = rt.clock.now()
    existing = await store.find_for_user(
        conn, environment_id, integration_id, user_id, provider_account_id
    )
    if not existing and prefer_grant_id is not None:
        # a reconnect of a grant whose account id was unknown before
        cand = await store.get(conn, environment_id, prefer_grant_id)
        if (
            cand is not None
            and cand.integration_id == integration_id
            and cand.user_id == user_id
            and not cand.provider_account_id
        ):
            existing = [cand]
    if existing:
        old = existing[0]
        previous_rt = (
            open_token(rt.vault, old, "refresh_token") if old.status != "revoked" else None
        )
        version = old.version + 1
        stored = token_columns(
            rt,
            spec,
            environment_id=environment_id,
            grant_id=old.id,
            version=version,
            tokens=tokens,
            previous_refresh_token=previous_rt,
            previous_scopes=None,
            requested_scopes=requested_scopes,
            id_token_exp=id_token_exp,
            fresh_consent=via == "connect",
            now=now,
        )
        values = dict(stored.columns)
        values.update(
            status="active",
            provider_account_id=provider_account_id,
            last_refreshed_at=now,
            lease_owner=None,
            lease_until=None,
            refresh_attempts=0,
            retry_at=None,
            failure_code=None,
            failure_description=None,
            failed_at=None,
            revoked_at=None,
        )
        # fenced: a concurrent refresh that wrote a newer generation makes this fail loudly
        ok = await store.update_fenced(conn, environment_id, old.id, old.version, values)
        if not ok:
            raise Conflict("the grant changed while connecting; retry")
        event = "grant.recovered" if old.status in ("invalid", "revoked") else "grant.updated"
        grant_id = old.id
    else:
        grant_id = str(uuid.uuid4())
        stored = token_columns(
            rt,
            spec,
            environment_id=environment_id,
            grant_id=grant_id,
            version=1,
            tokens=tokens,
            previous_refresh_token=None,
            previous_scopes=None,
            requested_scopes=requested_scopes,
            id_token_exp=id_token_exp,
            fresh_consent=via == "connect",
            now=now,
        )
        values = dict(stored.columns)
        values.update(
            id=grant_id,
            environment_id=environment_id,
            integration_id=integration_id,
            provider=spec.name,
            user_id=user_id,
            provider_account_id=provider_account_id,
            status="active",
            last_refreshed_at=now,
            refresh_attempts=0,
            created_via=via,
            created_at=now,
        )
        await store.insert_grant(conn, values)
        event = "grant.created"
    rec = await store.get(conn, environment_id, grant_id)
    assert rec is not None
    await events.emit(
        conn, environment_id=environment_id, event_type=event, grant=grant_view(rec), now=now
    )
    await audit.record(
        conn,
        environment_id=environment_id,
        actor=actor,
        action=event,
        now=now,
        grant_id=grant_id,
        integration_id=integration_id,
        via=via,
        refresh_token_received=tokens.refresh_token is not None,
    )
    return rec, event
