"""Disconnect: revoke at the provider (RFC 7009), destroy the stored secrets, keep the record.

The grant is revoked at once (no token is served from then on). The provider is asked
during the request (a blip is retried for under a second); when it does not answer (5xx, timeout, discovery down) the
token is kept sealed in the revocation outbox and the worker retries with backoff
(``GRANTKEEPER_REVOCATION_RETRY_BASE``, doubling up to an hour) until the provider
answers 200 or refuses for good, then destroys it (SECURITY.md C12). The DELETE then
answers ``provider_revocation: "failed"`` with ``"revocation_pending": true``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

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
from grantkeeper.store import revocations as outbox
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord
from grantkeeper.vault import aad_for

__all__ = ["delete_grant", "outbox_aad", "retry_pending"]

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "unsupported"]
_OUTCOMES = ("succeeded", "failed", "unsupported")


async def _revoke_at_provider(rt: Runtime, rec: GrantRecord) -> Outcome | _Pending:
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
    except ProviderUnavailable:
        # discovery is down: the outbox retries once it is back
        return _pending(rec)
    except Exception:  # noqa: BLE001 - the secret unreadable or the endpoints gone: cannot revoke
        log.warning("grant %s: could not resolve the integration to revoke", rec.id)
        return "failed"
    if not resolved.revocation_url:
        return "unsupported"
    picked = _token_to_revoke(rt, rec)
    if picked is None:
        return "unsupported"
    token, hint = picked
    # a blip is retried within the request (under a second); a longer outage is the
    # outbox's: the worker retries with backoff until the provider answers (C12)
    for delay in (0.25, 0.5, None):
        try:
            await revoke_token(
                rt.token_http,
                resolved.revocation_url,
                resolved.client,
                token,
                hint,
                timeout=rt.settings.http_timeout,
            )
            return "succeeded"
        except ProviderUnavailable:
            if delay is None:
                return _pending(rec)
            await asyncio.sleep(delay)
        except OAuthErrorResponse as exc:
            # RFC 7009 2.2.1: unsupported_token_type means the server cannot revoke this type
            if exc.error == "unsupported_token_type":
                return "unsupported"
            log.warning("grant %s: the provider refused the revocation (%s)", rec.id, exc.error)
            return "failed"
    return _pending(rec)


class _Pending:
    """The provider did not answer: the revocation goes to the outbox."""

    __slots__ = ()


_PENDING = _Pending()


def _pending(rec: GrantRecord) -> Outcome | _Pending:
    log.info("grant %s: provider revocation deferred to the outbox", rec.id)
    return _PENDING


def _token_to_revoke(rt: Runtime, rec: GrantRecord) -> tuple[str, str] | None:
    # the refresh token first: revoking it ends the whole grant at most providers (RFC 7009 2.1)
    if (token := open_token(rt.vault, rec, "refresh_token")) is not None:
        return token, "refresh_token"
    if (token := open_token(rt.vault, rec, "access_token")) is not None:
        return token, "access_token"
    return None


def outbox_aad(environment_id: str, row_id: str) -> bytes:
    return aad_for(environment_id, "revocation_outbox", row_id, "token")


async def _enqueue(conn: AsyncConnection, rt: Runtime, rec: GrantRecord, now: float) -> None:
    """Keep the token sealed in the outbox (never in the grant, revoked at once)."""
    picked = _token_to_revoke(rt, rec)
    if picked is None:
        return
    token, hint = picked
    row_id = str(uuid.uuid4())
    await outbox.enqueue(
        conn,
        {
            "id": row_id,
            "environment_id": rec.environment_id,
            "grant_id": rec.id,
            "integration_id": rec.integration_id,
            "token_type_hint": hint,
            "token_ct": rt.vault.seal(token, outbox_aad(rec.environment_id, row_id)),
            "status": "pending",
            "attempts": 1,
            "next_attempt_at": now + rt.settings.revocation_retry_base,
            "created_at": now,
        },
    )


async def retry_pending(rt: Runtime, *, limit: int = 50) -> int:
    """The worker's step: retry due revocations from the outbox; returns how many it tried."""
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        rows = await outbox.claim_due(conn, now, limit=limit, lease=rt.settings.http_timeout * 3)
    for row in rows:
        await _retry_one(rt, row)
    return len(rows)


async def _retry_one(rt: Runtime, row: dict[str, Any]) -> None:
    env, row_id = str(row["environment_id"]), str(row["id"])
    attempts = int(row["attempts"]) + 1
    outcome: str | None = None
    error = ""
    try:
        async with reading(rt.engine) as conn:
            integ = await integration_store.get(conn, env, str(row["integration_id"]))
        if integ is None or row["token_ct"] is None:
            outcome = "unsupported"
        else:
            resolved = await resolve(rt, integ)
            if not resolved.revocation_url:
                outcome = "unsupported"
            else:
                token = rt.vault.open_str(row["token_ct"], outbox_aad(env, row_id))
                await revoke_token(
                    rt.token_http,
                    resolved.revocation_url,
                    resolved.client,
                    token,
                    str(row["token_type_hint"]),
                    timeout=rt.settings.http_timeout,
                )
                outcome = "succeeded"
    except ProviderUnavailable as exc:
        error = f"provider unavailable ({exc.code})"
    except OAuthErrorResponse as exc:
        outcome = "unsupported" if exc.error == "unsupported_token_type" else "failed"
        error = f"the provider refused the revocation ({exc.error})"
    except Exception as exc:  # noqa: BLE001 - a key or store hiccup: try again later
        error = f"{type(exc).__name__}"
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        if outcome is None:
            delay = min(rt.settings.revocation_retry_base * 2 ** min(attempts - 1, 20), 3600.0)
            await outbox.retry_later(conn, row_id, attempts=attempts, at=now + delay, error=error)
            return
        await outbox.finish(conn, row_id, outcome, now, error or None)
        await audit.record(
            conn,
            environment_id=env,
            actor="worker",
            action="grant.provider_revocation",
            now=now,
            grant_id=str(row["grant_id"]),
            integration_id=str(row["integration_id"]),
            provider_revocation=outcome,
            attempts=attempts,
        )
    log.info(
        "grant %s: provider revocation %s after %d attempts", row["grant_id"], outcome, attempts
    )


async def delete_grant(rt: Runtime, principal: Principal, grant_id: str) -> dict[str, Any]:
    async with reading(rt.engine) as conn:
        rec = await get_visible(conn, principal.environment_id, grant_id, principal.integration_ids)
    if rec.status == "revoked":
        # nothing is sent again; the answer tells where the revocation stands now: the
        # outbox's outcome when the first DELETE left it one, else the first DELETE's
        async with reading(rt.engine) as conn:
            queued = await outbox.latest_for_grant(conn, rec.environment_id, rec.id)
            first = await audit_store.last_detail(conn, rec.environment_id, rec.id, "grant.deleted")
        earlier = queued if queued is not None else (first or {}).get("provider_revocation")
        if earlier == "pending":
            return {
                "id": rec.id,
                "status": "revoked",
                "provider_revocation": "failed",
                "already_revoked": True,
                "revocation_pending": True,
            }
        return {
            "id": rec.id,
            "status": "revoked",
            "provider_revocation": earlier if earlier in _OUTCOMES else "unsupported",
            "already_revoked": True,
        }
    attempt = await _revoke_at_provider(rt, rec)
    # the provider did not answer: the grant is revoked now, its token waits in the outbox
    # and the answer is "failed" with "revocation_pending": true until the worker is done
    pending = isinstance(attempt, _Pending)
    outcome: Outcome = "failed" if isinstance(attempt, _Pending) else attempt
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        if pending:
            await _enqueue(conn, rt, rec, now)
        # the generation bump (in SQL) fences out a refresh that is in flight right now
        await store.mark_revoked(conn, rec.environment_id, rec.id, now)
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
            revocation_pending=pending,
        )
    rt.counts.forget()
    return {
        "id": rec.id,
        "status": "revoked",
        "provider_revocation": outcome,
        "already_revoked": False,
        # only while the outbox still has to reach the provider
        **({"revocation_pending": True} if pending else {}),
    }
