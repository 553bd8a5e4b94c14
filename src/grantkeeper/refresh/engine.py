"""Single-flight refresh across every process sharing the database.

How one refresh stays one:

1. In-process coalescing: concurrent callers in one process share one task
   per grant (``Runtime.inflight``). An optimisation only.
2. Cross-process lease: a conditional ``UPDATE grants SET lease_owner, lease_until
   WHERE lease free or expired`` (works on PostgreSQL and SQLite alike, holds no
   connection during the provider call). Waiters poll, then re-read: if the
   token generation (``version``) moved on, they use the new token.
3. Fencing: the new tokens are written with ``WHERE version = <read version>``
   so a stale writer can never overwrite a newer refresh token.
4. Durable first: the rotated refresh token is committed before the access
   token is returned; a failed write is retried from memory and never reported
   as success.
5. ``invalid_grant``: re-read first; only if nobody refreshed meanwhile is the
   grant marked ``invalid`` (one ``grant.invalid`` event, thanks to the
   conditional update), after which no provider call is made for it.

Transient failures (5xx, 429, timeouts, network) leave the grant active with a
backoff (``retry_at``) and raise ``ProviderUnavailable``; a lease wait that
times out raises ``RefreshBusy``. Neither is ever a credential failure.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, OperationalError

from grantkeeper import audit, events
from grantkeeper.clock import iso
from grantkeeper.credential_grants import mint_tokens
from grantkeeper.errors import (
    GrantInvalid,
    GrantRevoked,
    NotFound,
    ProviderRejected,
    ProviderUnavailable,
    RefreshBusy,
    StoreUnavailable,
)
from grantkeeper.grants import grant_view, open_token, token_columns
from grantkeeper.integrations import resolve
from grantkeeper.oauth.tokens import OAuthErrorResponse, TokenSet, token_request
from grantkeeper.providers.catalog import MINTING_MODES
from grantkeeper.providers.quirks import apply_refresh_request, apply_token_response
from grantkeeper.refresh.policy import backoff, effective_min_ttl
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord

__all__ = ["IssuedToken", "ensure_fresh", "raise_for_status", "refresh"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, repr=False)
class IssuedToken:
    access_token: str
    token_type: str
    expires_at: float | None
    scopes: tuple[str, ...]
    grant_id: str

    def __repr__(self) -> str:
        return f"IssuedToken(grant_id={self.grant_id!r}, expires_at={self.expires_at!r})"


def raise_for_status(rec: GrantRecord) -> None:
    if rec.status == "revoked":
        raise GrantRevoked("the grant was revoked")
    if rec.status == "invalid":
        raise GrantInvalid(
            "the grant is no longer valid; the user must reconnect",
            failure={
                "code": rec.failure_code,
                "description": rec.failure_description,
                "at": iso(rec.failed_at),
            },
        )


def _mints(rt: Runtime, rec: GrantRecord) -> bool:
    """Kinds whose tokens the vault mints (client credentials, JWT bearer, GitHub App)."""
    return rec.provider in rt.catalog and rt.catalog.get(rec.provider).auth_mode in MINTING_MODES


def _usable(rec: GrantRecord, now: float, min_ttl: float) -> bool:
    if rec.access_token_ct is None:
        return False
    exp = rec.access_token_expires_at
    return exp is None or exp - now >= min_ttl


def issued(rt: Runtime, rec: GrantRecord) -> IssuedToken:
    token = open_token(rt.vault, rec, "access_token")
    assert token is not None
    return IssuedToken(
        access_token=token,
        token_type=rec.token_type,
        expires_at=rec.access_token_expires_at,
        scopes=rec.scopes,
        grant_id=rec.id,
    )


async def ensure_fresh(
    rt: Runtime,
    rec: GrantRecord,
    *,
    min_ttl: float,
    force: bool,
) -> GrantRecord:
    """Return a record whose access token lives at least ``min_ttl`` (refreshing once if needed).

    ``rec`` was just read by the caller (who checked environment and scope).
    """
    raise_for_status(rec)
    now = rt.clock.now()
    ttl = effective_min_ttl(
        min_ttl, expires_at=rec.access_token_expires_at, issued_at=rec.last_refreshed_at
    )
    if not force and _usable(rec, now, ttl):
        return rec
    if rec.refresh_token_ct is None and not _mints(rt, rec):
        if rec.access_token_ct is not None and (
            rec.access_token_expires_at is None or rec.access_token_expires_at > now
        ):
            return rec  # nothing to refresh with: the best we have is still valid
        raise GrantInvalid(
            "the access token expired and the grant holds no refresh token; the user must reconnect",
            failure={
                "code": "no_refresh_token",
                "description": "no refresh token was issued",
                "at": None,
            },
        )
    still_valid = rec.access_token_ct is not None and (
        rec.access_token_expires_at is None or rec.access_token_expires_at > now + 1
    )
    if (
        not force
        and still_valid
        and rec.last_refreshed_at is not None
        and now - rec.last_refreshed_at < rt.settings.refresh_min_interval
    ):
        # per-grant budget: a token minted moments ago is the best there is
        return rec
    if not force and rec.retry_at is not None and rec.retry_at > now:
        # the provider failed recently: back off instead of calling it on every request
        if rec.access_token_ct is not None and (
            rec.access_token_expires_at is None or rec.access_token_expires_at > now + 1
        ):
            return rec
        raise ProviderUnavailable(
            "the provider failed recently; retrying later",
            retry_after=math.ceil(rec.retry_at - now),
        )
    try:
        return await refresh(
            rt, rec.environment_id, rec.id, seen_version=rec.version, trigger="on_demand"
        )
    except (ProviderUnavailable, RefreshBusy, ProviderRejected, StoreUnavailable):
        # serve a token that is still valid, even if shorter-lived than asked
        if rec.access_token_ct is not None and (
            rec.access_token_expires_at is None or rec.access_token_expires_at > rt.clock.now() + 1
        ):
            return rec
        raise


async def refresh(
    rt: Runtime,
    environment_id: str,
    grant_id: str,
    *,
    seen_version: int | None,
    trigger: str,
    lease_owner: str | None = None,
) -> GrantRecord:
    """Refresh once (coalesced in-process, leased across processes)."""
    fut = rt.inflight.get(grant_id)
    if fut is not None:
        return await asyncio.shield(fut)
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    rt.inflight[grant_id] = fut
    try:
        result = await _refresh_leased(
            rt, environment_id, grant_id, seen_version, trigger, lease_owner
        )
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()  # mark retrieved: waiters may be none
        raise
    else:
        fut.set_result(result)
        return result
    finally:
        rt.inflight.pop(grant_id, None)


async def _refresh_leased(
    rt: Runtime,
    environment_id: str,
    grant_id: str,
    seen_version: int | None,
    trigger: str,
    lease_owner: str | None,
) -> GrantRecord:
    s = rt.settings
    owner = lease_owner or f"{rt.instance_id}:{secrets.token_hex(4)}"
    deadline = time.monotonic() + s.refresh_wait_timeout
    delay = 0.02
    while True:
        now = rt.clock.now()
        async with rt.engine.begin() as conn:
            claimed = await store.claim_lease(
                conn, environment_id, grant_id, owner, now, now + s.refresh_lease_seconds
            )
            rec = await store.get(conn, environment_id, grant_id)
        if rec is None:
            raise NotFound("no such grant")
        raise_for_status(rec)
        if (
            seen_version is not None
            and rec.version != seen_version
            and rec.access_token_ct is not None
        ):
            # somebody refreshed since the caller looked: use theirs
            if claimed:
                await _release(rt, environment_id, grant_id, owner)
            return rec
        if claimed:
            break
        if time.monotonic() > deadline:
            raise RefreshBusy("another process is refreshing this grant; retry shortly")
        await asyncio.sleep(delay)
        delay = min(delay * 1.6, 0.25)
    try:
        return await _refresh_at_provider(rt, rec, owner, trigger)
    except BaseException:
        # never leave a live lease behind on our own errors (a crash just lets it expire)
        try:
            await asyncio.shield(_release(rt, environment_id, grant_id, owner))
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release refresh lease for grant %s", grant_id)
        raise


async def _release(rt: Runtime, environment_id: str, grant_id: str, owner: str) -> None:
    async with rt.engine.begin() as conn:
        await store.release_lease(conn, environment_id, grant_id, owner)


async def _refresh_at_provider(
    rt: Runtime, rec: GrantRecord, owner: str, trigger: str
) -> GrantRecord:
    s = rt.settings
    async with reading(rt.engine) as conn:
        integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    if integ is None:
        raise NotFound("the grant's integration no longer exists")
    spec = rt.catalog.get(integ.provider)
    refresh_token: str | None = None
    if spec.auth_mode not in MINTING_MODES:
        resolved = await resolve(rt, integ)
        refresh_token = open_token(rt.vault, rec, "refresh_token")
        assert refresh_token is not None
        params = apply_refresh_request(
            spec, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        if resolved.resource:
            params["resource"] = resolved.resource  # RFC 8707: the token stays bound to it
    started = time.monotonic()
    metrics = rt.metrics
    try:
        if spec.auth_mode in MINTING_MODES:
            # the kind mints a new token (client credentials, JWT assertion, app JWT) under
            # the same lease and fencing as a refresh; it never yields a refresh token
            tokens = await mint_tokens(rt, rec)
        else:
            tokens = await token_request(
                rt.http,
                resolved.token_url,
                resolved.client,
                params,
                timeout=s.http_timeout,
                normalise=lambda body: apply_token_response(spec, body),
            )
    except ProviderUnavailable as exc:
        metrics.refreshes.labels(spec.name, "transient", trigger).inc()
        await _record_transient(rt, rec, owner, "provider_unavailable", exc.detail, exc.retry_after)
        raise
    except OAuthErrorResponse as exc:
        if exc.permanent:
            metrics.refreshes.labels(spec.name, "invalid", trigger).inc()
            return await _mark_invalid(rt, rec, owner, exc)
        metrics.refreshes.labels(spec.name, "rejected", trigger).inc()
        await _record_transient(rt, rec, owner, exc.error, exc.description, None)
        raise ProviderRejected(f"the provider rejected the refresh ({exc.error})") from None
    finally:
        metrics.refresh_seconds.labels(spec.name).observe(time.monotonic() - started)
    metrics.refreshes.labels(spec.name, "success", trigger).inc()
    return await _persist(rt, rec, owner, tokens, refresh_token, trigger)


async def _persist(
    rt: Runtime,
    rec: GrantRecord,
    owner: str,
    tokens: TokenSet,
    old_refresh_token: str | None,
    trigger: str,
) -> GrantRecord:
    """Commit the new generation before anything else; retry the write from memory."""
    now = rt.clock.now()
    spec = rt.catalog.get(rec.provider)
    stored = token_columns(
        rt,
        spec,
        environment_id=rec.environment_id,
        grant_id=rec.id,
        version=rec.version + 1,
        tokens=tokens,
        previous_refresh_token=old_refresh_token,
        previous_scopes=rec.scopes,
        requested_scopes=None,
        now=now,
    )
    values = dict(stored.columns)
    if values["api_base_url"] is None:
        values["api_base_url"] = rec.api_base_url
    values.update(
        last_refreshed_at=now,
        lease_owner=None,
        lease_until=None,
        refresh_attempts=0,
        retry_at=None,
        failure_code=None,
        failure_description=None,
        failed_at=None,
    )
    delay = 0.05
    last_exc: Exception | None = None
    for _attempt in range(6):
        try:
            async with rt.engine.begin() as conn:
                ok = await store.update_fenced(
                    conn, rec.environment_id, rec.id, rec.version, values
                )
                if ok:
                    await audit.record(
                        conn,
                        environment_id=rec.environment_id,
                        actor="system",
                        action="grant.refreshed",
                        now=now,
                        grant_id=rec.id,
                        integration_id=rec.integration_id,
                        trigger=trigger,
                        rotated=tokens.refresh_token is not None
                        and tokens.refresh_token != old_refresh_token,
                    )
                fresh = await store.get(conn, rec.environment_id, rec.id)
            if not ok:
                log.warning(
                    "grant %s: a newer token generation was written meanwhile; keeping it", rec.id
                )
            assert fresh is not None
            return fresh
        except (OperationalError, DBAPIError) as exc:
            last_exc = exc
            log.warning(
                "grant %s: storing refreshed tokens failed (%s); retrying",
                rec.id,
                type(exc).__name__,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    log.error("grant %s: refreshed tokens could not be stored", rec.id)
    raise StoreUnavailable("the refreshed token could not be stored; retry shortly") from last_exc


async def _record_transient(
    rt: Runtime,
    rec: GrantRecord,
    owner: str,
    code: str,
    description: str | None,
    retry_after: float | None,
) -> None:
    now = rt.clock.now()
    attempts = rec.refresh_attempts + 1
    retry_at = now + backoff(attempts, retry_after=retry_after)
    async with rt.engine.begin() as conn:
        await store.update_grant(
            conn,
            rec.environment_id,
            rec.id,
            {
                "refresh_attempts": attempts,
                "retry_at": retry_at,
                "lease_owner": None,
                "lease_until": None,
            },
        )
        await audit.record(
            conn,
            environment_id=rec.environment_id,
            actor="system",
            action="grant.refresh_failed",
            now=now,
            grant_id=rec.id,
            integration_id=rec.integration_id,
            code=code,
            transient=True,
            description=description,
        )


async def _mark_invalid(
    rt: Runtime, rec: GrantRecord, owner: str, exc: OAuthErrorResponse
) -> GrantRecord:
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        current = await store.get(conn, rec.environment_id, rec.id)
        if current is not None and current.version != rec.version and current.status == "active":
            # someone stored a newer refresh token meanwhile: ours was simply stale
            await store.release_lease(conn, rec.environment_id, rec.id, owner)
            return current
        description = exc.description or "the provider refused the refresh token"
        marked = await store.update_fenced(
            conn,
            rec.environment_id,
            rec.id,
            rec.version,
            {
                "status": "invalid",
                "failure_code": exc.error,
                "failure_description": description[:500],
                "failed_at": now,
                "refresh_due_at": None,
                "lease_owner": None,
                "lease_until": None,
                "updated_at": now,
            },
            require_status="active",
        )
        fresh = await store.get(conn, rec.environment_id, rec.id)
        assert fresh is not None
        if marked:
            await events.emit(
                conn,
                environment_id=rec.environment_id,
                event_type="grant.invalid",
                grant=grant_view(fresh),
                now=now,
            )
            await audit.record(
                conn,
                environment_id=rec.environment_id,
                actor="system",
                action="grant.invalid",
                now=now,
                grant_id=rec.id,
                integration_id=rec.integration_id,
                code=exc.error,
            )
    raise_for_status(fresh)
    return fresh
