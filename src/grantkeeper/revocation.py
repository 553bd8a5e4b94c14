"""Disconnect: revoke at the provider (RFC 7009), destroy the stored secrets, keep the record."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from grantkeeper import audit, events
from grantkeeper.apikeys import Principal
from grantkeeper.credential_grants import is_code_kind
from grantkeeper.errors import ProviderUnavailable
from grantkeeper.grants import get_visible, grant_view, open_token
from grantkeeper.integrations import resolve
from grantkeeper.kinds import kind_for
from grantkeeper.kinds.config import context, kind_config, open_credentials
from grantkeeper.oauth.tokens import OAuthErrorResponse, revoke_token
from grantkeeper.runtime import Runtime
from grantkeeper.store import audit as audit_store
from grantkeeper.store import grants as store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord

__all__ = ["delete_grant"]

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "unsupported"]
_OUTCOMES = ("succeeded", "failed", "unsupported")


async def _revoke_at_provider(rt: Runtime, rec: GrantRecord) -> Outcome:
    async with reading(rt.engine) as conn:
        integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    if integ is None:
        return "unsupported"
    if not is_code_kind(rt, integ.provider):
        try:
            cfg = kind_config(rt, integ)
            creds = open_credentials(rt.vault, rec)
            return await kind_for(cfg.mode).revoke(
                context(rt), cfg, creds, open_token(rt.vault, rec, "access_token")
            )
        except Exception:  # noqa: BLE001 - the grant is destroyed locally whatever happens
            log.warning("grant %s: revocation at the provider failed", rec.id)
            return "failed"
    try:
        resolved = await resolve(rt, integ)
    except Exception:  # noqa: BLE001 - discovery down or the secret unreadable: cannot revoke
        log.warning("grant %s: could not resolve the integration to revoke", rec.id)
        return "failed"
    if not resolved.revocation_url:
        return "unsupported"
    # the refresh token first: revoking it ends the whole grant at most providers (RFC 7009 2.1)
    if (token := open_token(rt.vault, rec, "refresh_token")) is not None:
        hint = "refresh_token"
    elif (token := open_token(rt.vault, rec, "access_token")) is not None:
        hint = "access_token"
    else:
        return "unsupported"
    delay = 0.5
    for attempt in range(4):
        try:
            await revoke_token(
                rt.http,
                resolved.revocation_url,
                resolved.client,
                token,
                hint,
                timeout=rt.settings.http_timeout,
            )
            return "succeeded"
        except ProviderUnavailable as exc:
            if attempt == 3:
                return "failed"
            await asyncio.sleep(
                min(max(delay, float(exc.retry_after) if exc.retry_after < 5 else delay), 4.0)
            )
            delay *= 2
        except OAuthErrorResponse as exc:
            # RFC 7009 2.2.1: unsupported_token_type means the server cannot revoke this type
            if exc.error == "unsupported_token_type":
                return "unsupported"
            log.warning("grant %s: the provider refused the revocation (%s)", rec.id, exc.error)
            return "failed"
    return "failed"


async def delete_grant(rt: Runtime, principal: Principal, grant_id: str) -> dict[str, Any]:
    async with reading(rt.engine) as conn:
        rec = await get_visible(conn, principal.environment_id, grant_id, principal.integration_ids)
    if rec.status == "revoked":
        # nothing is sent again; the answer tells what happened the first time
        async with reading(rt.engine) as conn:
            first = await audit_store.last_detail(conn, rec.environment_id, rec.id, "grant.deleted")
        earlier = (first or {}).get("provider_revocation")
        return {
            "id": rec.id,
            "status": "revoked",
            "provider_revocation": earlier if earlier in _OUTCOMES else "unsupported",
            "already_revoked": True,
        }
    outcome = await _revoke_at_provider(rt, rec)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        # bumping the version fences out a refresh that is in flight right now
        current = await store.get(conn, rec.environment_id, rec.id)
        assert current is not None
        await store.update_grant(
            conn,
            rec.environment_id,
            rec.id,
            {
                "status": "revoked",
                "access_token_ct": None,
                "refresh_token_ct": None,
                "id_token_ct": None,
                "credentials_ct": None,
                "version": current.version + 1,
                "refresh_due_at": None,
                "lease_owner": None,
                "lease_until": None,
                "revoked_at": now,
                "updated_at": now,
            },
        )
        fresh = await store.get(conn, rec.environment_id, rec.id)
        assert fresh is not None
        await events.emit(
            conn,
            environment_id=rec.environment_id,
            event_type="grant.deleted",
            grant=grant_view(fresh),
            now=now,
        )
        await audit.record(
            conn,
            environment_id=rec.environment_id,
            actor=principal.actor,
            action="grant.deleted",
            now=now,
            grant_id=rec.id,
            integration_id=rec.integration_id,
            provider_revocation=outcome,
        )
    return {
        "id": rec.id,
        "status": "revoked",
        "provider_revocation": outcome,
        "already_revoked": False,
    }
