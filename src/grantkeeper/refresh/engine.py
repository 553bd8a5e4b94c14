"""Single-flight refresh across every process sharing the database.

How one refresh stays one, and how a rotated refresh token is never dropped:

1. In-process coalescing: concurrent callers in one process share one task per
   grant (``Runtime.inflight``). The task is never cancelled by its callers (they
   await it through ``asyncio.shield``): a client that hangs up, a request timeout
   or a shutdown cannot cut a refresh off between the provider's answer and the
   commit. ``drain`` waits for these tasks when the process stops.
2. Cross-process lease (``refresh.lease``): claimed before anything else, renewed
   before the provider call (for a budget covering the call and the persist
   retries) and before each persist retry, released only by its owner and only when
   the outcome is known. A renewal also re-takes an expired lease, but only while the
   generation read with it is still the stored one (otherwise its refresh token was
   spent by a process that held the grant meanwhile). Lease arithmetic uses the
   database's clock.
3. Fencing: the new generation is written only into an ``active`` grant still at the
   generation read, whose lease is ours (or free); the generation is bumped in SQL.
   Tokens minted for a grant that was deleted meanwhile are revoked at the provider.
4. Durable first: the rotated refresh token is committed before the access token is
   returned; the write is retried from memory on every database or pool error and
   never reported as success when it failed (``StoreUnavailable``: 503).
5. Failure classes of a provider answer:
   - grant-level (``invalid_grant`` and friends): re-read first; only if nobody
     refreshed meanwhile is the grant marked ``invalid`` (one ``grant.invalid`` event);
   - integration-level (``invalid_client``, ``unauthorized_client``): the grant stays
     active; the integration shows ``failing`` and backs off (bounded; first retry
     within 30 s); ``IntegrationMisconfigured`` (424);
   - transient (5xx, 429, timeouts, network): bounded backoff (``retry_at``),
     ``ProviderUnavailable`` (503 with Retry-After);
   - outcome unknown (a 2xx that could not be read whole or parsed): the provider
     may have rotated, so the same refresh token is presented again at once
     (providers with a reuse grace window accept it); if that is unknown too, the
     lease is kept until it expires, and it is logged and counted.

A lease wait that times out raises ``RefreshBusy``. None of these is a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from grantkeeper import audit, events, tracing
from grantkeeper.clock import iso
from grantkeeper.credential_grants import mint_tokens
from grantkeeper.errors import (
    GrantInvalid,
    GrantkeeperError,
    GrantRevoked,
    IntegrationMisconfigured,
    NotFound,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
    RefreshBusy,
    StoreUnavailable,
)
from grantkeeper.grants import grant_view, open_token, token_aad, token_columns
from grantkeeper.integrations import ResolvedIntegration, resolve
from grantkeeper.oauth.tokens import OAuthErrorResponse, TokenSet, revoke_token, token_request
from grantkeeper.providers.catalog import MINTING_MODES, ProviderSpec
from grantkeeper.providers.quirks import apply_refresh_request, apply_token_response
from grantkeeper.refresh import lease
from grantkeeper.refresh.policy import backoff
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord, IntegrationRecord
from grantkeeper.store.unavailable import DB_ERRORS

__all__ = [
    "GrantState",
    "IssuedToken",
    "Progress",
    "RefreshedColumns",
    "drain",
    "ensure_fresh",
    "fresh_claim_seconds",
    "in_backoff",
    "integration_failed",
    "integration_recovered",
    "keep_leased",
    "lease_budget",
    "mark_invalid",
    "persist_refreshed",
    "raise_for_status",
    "record_failure",
    "refresh",
    "refreshed_columns",
    "release_lease",
    "renew_lease",
]

log = logging.getLogger(__name__)

#: how often a refreshed token's write is tried, and the pause between tries (seconds)
PERSIST_ATTEMPTS = 8
PERSIST_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.0, 2.0)
#: integration-level failures: first retry within 30 s, then doubling up to 10 minutes
INTEGRATION_BACKOFF_BASE = 20.0
INTEGRATION_BACKOFF_CAP = 600.0
#: transient failures of one grant
GRANT_BACKOFF_BASE = 2.0
GRANT_BACKOFF_CAP = 600.0


@dataclass(frozen=True, slots=True, repr=False)
class IssuedToken:
    access_token: str
    token_type: str
    expires_at: float | None
    scopes: tuple[str, ...]
    grant_id: str

    def __repr__(self) -> str:
        return f"IssuedToken(grant_id={self.grant_id!r}, expires_at={self.expires_at!r})"


class GrantState(Protocol):
    """What deciding on a refresh and serving a grant's token read of it: a ``GrantRecord``,
    or the token read's slim row (``store.hotpath.TokenRow``), so a read that must refresh
    first needs no second read of the whole row."""

    @property
    def id(self) -> str: ...
    @property
    def environment_id(self) -> str: ...
    @property
    def integration_id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def token_type(self) -> str: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...
    @property
    def access_token_ct(self) -> bytes | None: ...
    @property
    def access_token_expires_at(self) -> float | None: ...
    @property
    def version(self) -> int: ...
    @property
    def has_refresh_token(self) -> bool: ...
    @property
    def last_refreshed_at(self) -> float | None: ...
    @property
    def retry_at(self) -> float | None: ...
    @property
    def failure_code(self) -> str | None: ...
    @property
    def failure_description(self) -> str | None: ...
    @property
    def failed_at(self) -> float | None: ...


S = TypeVar("S", bound=GrantState)


def raise_for_status(rec: GrantState) -> None:
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


def lease_budget(rt: Runtime) -> float:
    """Seconds a lease is taken or renewed for: the next step (discovery, or the provider
    call, each up to the HTTP timeout) plus every persist retry, with room to spare. The
    lease is renewed before the call and before each retry, so each renewal only needs
    to cover what follows it."""
    s = rt.settings
    return max(s.refresh_lease_seconds, s.http_timeout + sum(PERSIST_DELAYS) + 2.0)


def _mints(rt: Runtime, rec: GrantState) -> bool:
    """Kinds whose tokens the vault mints (client credentials, JWT bearer, GitHub App)."""
    return rec.provider in rt.catalog and rt.catalog.get(rec.provider).auth_mode in MINTING_MODES


def _valid(rec: GrantState, now: float, ttl: float = 1.0) -> bool:
    if rec.access_token_ct is None:
        return False
    exp = rec.access_token_expires_at
    return exp is None or exp - now >= ttl


def in_backoff(rt: Runtime, rec: GrantState) -> bool:
    """The provider failed recently for this grant: no call before ``retry_at``."""
    return rec.retry_at is not None and rec.retry_at > rt.clock.now()


def issued(rt: Runtime, rec: GrantState) -> IssuedToken:
    if rec.access_token_ct is None:
        raise ProviderUnavailable("no access token is available for this grant yet")
    token = rt.vault.open_str(
        rec.access_token_ct, token_aad(rec.environment_id, rec.id, "access_token", rec.version)
    )
    return IssuedToken(
        access_token=token,
        token_type=rec.token_type,
        expires_at=rec.access_token_expires_at,
        scopes=rec.scopes,
        grant_id=rec.id,
    )


async def ensure_fresh(
    rt: Runtime,
    rec: S,
    *,
    min_ttl: float,
    force: bool,
) -> S | GrantRecord:
    """Return a record whose access token lives at least ``min_ttl`` (refreshing once if needed).

    ``rec`` was just read by the caller (who checked environment and scope). The
    v2 contract: below ``min_ttl`` the vault refreshes, unless the per-grant budget
    says a token was minted moments ago (then that newest token is the answer);
    ``force`` always refreshes, budget or not; only the backoff after provider
    failures turns either into a 503.
    """
    raise_for_status(rec)
    now = rt.clock.now()
    if not force and _valid(rec, now, min_ttl):
        return rec
    if not rec.has_refresh_token and not _mints(rt, rec):
        if _valid(rec, now, 0.0):
            return rec  # nothing to refresh with: the best we have is still valid
        raise GrantInvalid(
            "the access token expired and the grant holds no refresh token; the user must reconnect",
            failure={
                "code": "no_refresh_token",
                "description": "no refresh token was issued",
                "at": None,
            },
        )
    still_valid = _valid(rec, now)
    if (
        not force
        and still_valid
        and rec.last_refreshed_at is not None
        and now - rec.last_refreshed_at < rt.settings.refresh_min_interval
    ):
        # per-grant budget: a token minted moments ago is the best there is
        return rec
    if in_backoff(rt, rec):
        # the provider failed recently: back off instead of calling it on every request
        assert rec.retry_at is not None
        if still_valid and not force:
            return rec
        async with reading(rt.engine) as conn:
            integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
        if integ is not None and integ.failure_code is not None and integ.retry_at is not None:
            # the same answer as the call that met the refusal, for the integration's backoff
            # (a 503 provider_unavailable sent operators to the provider, not to their client)
            raise _misconfigured(integ, now)
        raise ProviderUnavailable(
            "the provider failed recently; retrying later",
            retry_after=max(1, math.ceil(rec.retry_at - now)),
        )
    try:
        return await refresh(
            rt, rec.environment_id, rec.id, seen_version=rec.version, trigger="on_demand"
        )
    except (
        ProviderUnavailable,
        RefreshBusy,
        ProviderRejected,
        StoreUnavailable,
        IntegrationMisconfigured,
    ):
        # serve a token that is still valid, even if shorter-lived than asked
        if not force and _valid(rec, rt.clock.now()):
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
    """Refresh once (coalesced in-process, leased across processes).

    The work runs in its own task that callers never cancel: cancelling a caller
    (a client gone, a shutdown) leaves the provider call and the persist running.
    """
    task = rt.inflight.get(grant_id)
    if task is None or task.done():
        task = asyncio.ensure_future(
            _traced_refresh(rt, environment_id, grant_id, seen_version, trigger, lease_owner)
        )
        rt.inflight[grant_id] = task

        def _done(t: asyncio.Future[Any]) -> None:
            if rt.inflight.get(grant_id) is t:
                del rt.inflight[grant_id]
            if not t.cancelled():
                t.exception()  # retrieved: there may be no caller left

        task.add_done_callback(_done)
    result: GrantRecord = await asyncio.shield(task)
    return result


async def _traced_refresh(
    rt: Runtime,
    environment_id: str,
    grant_id: str,
    seen_version: int | None,
    trigger: str,
    lease_owner: str | None,
) -> GrantRecord:
    with tracing.span("grantkeeper.refresh", grant_id=grant_id, trigger=trigger):
        return await _refresh_leased(
            rt, environment_id, grant_id, seen_version, trigger, lease_owner
        )


async def drain(rt: Runtime, timeout: float) -> int:
    """Wait up to ``timeout`` for every refresh in flight in this process; returns how
    many were still running (their leases stay: the outcome is unknown)."""
    pending = [t for t in rt.inflight.values() if not t.done()]
    if not pending:
        return 0
    log.info("waiting up to %.1fs for %d refresh(es) in flight", timeout, len(pending))
    _, still = await asyncio.wait(pending, timeout=max(timeout, 0.0))
    if still:
        log.warning("%d refresh(es) still in flight at shutdown; their leases expire", len(still))
    return len(still)


class Progress:
    """Whether the provider may have acted on the refresh token (the lease must then
    stay), and whether a fenced write already dropped our lease."""

    __slots__ = ("released", "unknown")

    def __init__(self) -> None:
        self.unknown = False
        self.released = False


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
    budget = lease_budget(rt)
    deadline = time.monotonic() + s.refresh_wait_timeout
    delay = 0.02
    integ: IntegrationRecord | None = None
    while True:
        # timed from before the claim is sent: the lease runs at most this long already
        claimed_at = time.monotonic()
        try:
            async with rt.engine.begin() as conn:
                claimed = await lease.claim(conn, environment_id, grant_id, owner, budget)
                rec = await store.get(conn, environment_id, grant_id)
                if claimed and rec is not None:
                    # read with the claim: one transaction less before the provider call
                    integ = await integration_store.get(conn, environment_id, rec.integration_id)
        except DB_ERRORS as exc:
            raise StoreUnavailable("the database is unavailable; retry shortly") from exc
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
                await release_lease(rt, rec, owner)
            return rec
        if claimed:
            break
        if time.monotonic() > deadline:
            raise RefreshBusy("another process is refreshing this grant; retry shortly")
        await asyncio.sleep(delay)
        delay = min(delay * 1.6, 0.25)
    progress = Progress()
    try:
        return await _refresh_at_provider(
            rt, rec, owner, trigger, progress, integ=integ, claimed_at=claimed_at
        )
    finally:
        if progress.unknown:
            # the provider may have rotated: nobody may present this refresh token again
            # until the lease expires (a crash leaves it the same way)
            log.warning("grant %s: refresh outcome unknown; keeping the lease", rec.id)
        elif not progress.released:
            await asyncio.shield(release_lease(rt, rec, owner))


async def release_lease(rt: Runtime, rec: GrantRecord, owner: str) -> None:
    """Give our lease up (only ours); if the database does not answer, it expires."""
    try:
        async with rt.engine.begin() as conn:
            await lease.release(conn, rec.environment_id, rec.id, owner)
    except DB_ERRORS:
        log.warning("grant %s: could not release the refresh lease; it expires", rec.id)


async def renew_lease(rt: Runtime, rec: GrantRecord, owner: str) -> bool | None:
    """Extend our lease while ``rec``'s generation is the stored one; False: another owner
    holds the grant, it left ``active``, or a newer generation was stored (``rec``'s refresh
    token is spent); None when the database did not answer (the write will tell)."""
    try:
        async with rt.engine.begin() as conn:
            return await lease.renew(
                conn, rec.environment_id, rec.id, owner, lease_budget(rt), rec.version
            )
    except DB_ERRORS:
        return None


async def keep_leased(rt: Runtime, rec: GrantRecord, owner: str) -> None:
    """Renew our lease while the provider call is in flight: an answer may take longer
    than one lease term to arrive whole, and nobody else may present this refresh token
    meanwhile (the provider may already have rotated it)."""
    interval = max(0.5, lease_budget(rt) / 3)
    while True:
        await asyncio.sleep(interval)
        if await renew_lease(rt, rec, owner) is False:
            log.warning("grant %s: the refresh lease is no longer ours to renew", rec.id)
            return


async def _read(rt: Runtime, rec: GrantRecord) -> GrantRecord | None:
    async with reading(rt.engine) as conn:
        return await store.get(conn, rec.environment_id, rec.id)


def fresh_claim_seconds(rt: Runtime) -> float:
    """How young a claim must be to go to the provider without renewing its lease first:
    its lease then still covers the call and every persist retry, and leaves two thirds
    of a term for the first renewal during the call."""
    s = rt.settings
    budget = lease_budget(rt)
    return max(0.0, min(budget - (s.http_timeout + sum(PERSIST_DELAYS) + 2.0), budget / 3))


async def _refresh_at_provider(
    rt: Runtime,
    rec: GrantRecord,
    owner: str,
    trigger: str,
    progress: Progress,
    *,
    integ: IntegrationRecord | None = None,
    claimed_at: float | None = None,
) -> GrantRecord:
    if integ is None:
        async with reading(rt.engine) as conn:
            integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    if integ is None:
        raise NotFound("the grant's integration no longer exists")
    now = rt.clock.now()
    if integ.failure_code is not None and integ.retry_at is not None and integ.retry_at > now:
        # the provider refused the integration's client moments ago: wait for its backoff
        await record_failure(
            rt, rec, owner, integ.failure_code, None, retry_at=integ.retry_at, count=False
        )
        raise _misconfigured(integ, now)
    spec = rt.catalog.get(integ.provider)
    minting = spec.auth_mode in MINTING_MODES
    resolved: ResolvedIntegration | None = None
    refresh_token: str | None = None
    params: dict[str, str] = {}
    if not minting:
        try:
            resolved = await resolve(rt, integ)
        except ProviderUnavailable as exc:
            await record_failure(
                rt, rec, owner, "provider_unavailable", exc.detail, exc.retry_after
            )
            raise
        spec = resolved.spec
        refresh_token = open_token(rt.vault, rec, "refresh_token")
        assert refresh_token is not None
        params = apply_refresh_request(
            spec, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        if resolved.resource:
            params["resource"] = resolved.resource  # RFC 8707: the token stays bound to it
    # the lease must outlast the call and every persist retry from here on; a claim young
    # enough (discovery was cached, no wait) already does: its lease cannot have run out,
    # so nobody else can hold the grant or have stored a newer generation
    young = claimed_at is not None and time.monotonic() - claimed_at <= fresh_claim_seconds(rt)
    renewed = True if young else await renew_lease(rt, rec, owner)
    if renewed is False:
        current = await _read(rt, rec)
        if current is None:
            raise NotFound("no such grant")
        raise_for_status(current)
        if current.version != rec.version and current.access_token_ct is not None:
            return current
        raise RefreshBusy("another process took over this refresh; retry shortly")
    metrics = rt.metrics
    if trigger == "proactive" and rec.refresh_due_at is not None:
        metrics.refresh_lag.observe(max(rt.clock.now() - rec.refresh_due_at, 0.0))

    async def call() -> TokenSet:
        started = time.monotonic()
        try:
            if resolved is None:
                # the kind mints a new token (client credentials, JWT assertion, app JWT)
                # under the same lease and fencing as a refresh; never a refresh token
                return await mint_tokens(rt, rec)
            return await token_request(
                rt.token_http,
                resolved.token_url,
                resolved.client,
                params,
                timeout=rt.settings.http_timeout,
                normalise=lambda body: apply_token_response(spec, body),
            )
        finally:
            took = time.monotonic() - started
            metrics.refresh_seconds.labels(spec.name).observe(took)
            metrics.provider_latency.labels(spec.name, "refresh").observe(took)

    progress.unknown = True
    heartbeat = asyncio.ensure_future(keep_leased(rt, rec, owner))
    try:
        try:
            tokens = await call()
        except ProviderOutcomeUnknown as exc:
            metrics.refreshes.labels(spec.name, "unknown", trigger).inc()
            log.warning(
                "grant %s: refresh outcome unknown (%s); presenting the same refresh token again",
                rec.id,
                exc.detail,
            )
            tokens = await call()
        finally:
            heartbeat.cancel()
    except ProviderOutcomeUnknown as exc:
        metrics.refreshes.labels(spec.name, "unknown", trigger).inc()
        log.error("grant %s: refresh outcome unknown twice; the lease is kept", rec.id)
        await record_failure(
            rt, rec, owner, "outcome_unknown", exc.detail, exc.retry_after, keep_lease=True
        )
        raise
    except ProviderUnavailable as exc:
        # no answer we could read: a lost answer after the provider rotated is possible,
        # but so is a refused connection; the lease is released (documented trade-off)
        progress.unknown = False
        metrics.refreshes.labels(spec.name, "transient", trigger).inc()
        await record_failure(rt, rec, owner, "provider_unavailable", exc.detail, exc.retry_after)
        raise
    except OAuthErrorResponse as exc:
        progress.unknown = False
        if exc.kind == "grant":
            metrics.refreshes.labels(spec.name, "invalid", trigger).inc()
            return await mark_invalid(rt, rec, owner, exc, progress)
        if exc.kind == "integration":
            metrics.refreshes.labels(spec.name, "misconfigured", trigger).inc()
            raise await integration_failed(rt, rec, owner, integ, exc) from None
        metrics.refreshes.labels(spec.name, "rejected", trigger).inc()
        await record_failure(rt, rec, owner, exc.error, exc.description, None)
        raise ProviderRejected(f"the provider rejected the refresh ({exc.error})") from None
    metrics.refreshes.labels(spec.name, "success", trigger).inc()
    fresh = await persist_refreshed(rt, rec, owner, tokens, refresh_token, trigger, resolved)
    progress.unknown = False
    progress.released = True
    if integ.failure_code is not None:
        await integration_recovered(rt, integ)
    return fresh


def _misconfigured(integ: IntegrationRecord, now: float) -> IntegrationMisconfigured:
    retry_after = math.ceil((integ.retry_at or now) - now) if integ.retry_at else 30
    return IntegrationMisconfigured(
        f"the provider refuses the client of integration {integ.id!r} ({integ.failure_code}); "
        "the grant stays active and is retried automatically",
        retry_after=max(1, retry_after),
    )


@dataclass(frozen=True, slots=True)
class RefreshedColumns:
    """What a successful refresh writes into the grant, and whether the provider rotated
    the refresh token (the ``grant.refreshed`` audit row says so)."""

    values: dict[str, Any]
    rotated: bool


def refreshed_columns(
    rt: Runtime,
    spec: ProviderSpec,
    rec: GrantRecord,
    tokens: TokenSet,
    old_refresh_token: str | None,
    *,
    now: float,
) -> RefreshedColumns:
    """The columns of the generation after ``rec``'s, sealed from the provider's answer:
    tokens, expiry, scopes, the next due time, and the failure and backoff state cleared.

    The generation number itself is not among them: the fenced write bumps it in SQL.
    """
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
    values.pop("version")
    if values["api_base_url"] is None:
        values["api_base_url"] = rec.api_base_url
    values.update(
        last_refreshed_at=now,
        refresh_attempts=0,
        retry_at=None,
        failure_code=None,
        failure_description=None,
        failed_at=None,
    )
    rotated = tokens.refresh_token is not None and tokens.refresh_token != old_refresh_token
    return RefreshedColumns(values, rotated)


async def persist_refreshed(
    rt: Runtime,
    rec: GrantRecord,
    owner: str,
    tokens: TokenSet,
    old_refresh_token: str | None,
    trigger: str,
    resolved: ResolvedIntegration | None,
) -> GrantRecord:
    """Commit the new generation before anything else; retry the write from memory."""
    now = rt.clock.now()
    refreshed = refreshed_columns(
        rt, rt.catalog.get(rec.provider), rec, tokens, old_refresh_token, now=now
    )
    values, rotated = refreshed.values, refreshed.rotated
    last_exc: BaseException | None = None
    for attempt in range(PERSIST_ATTEMPTS):
        if attempt:
            await asyncio.sleep(PERSIST_DELAYS[min(attempt - 1, len(PERSIST_DELAYS) - 1)])
            await renew_lease(rt, rec, owner)
        try:
            async with rt.engine.begin() as conn:
                ok = await lease.write_tokens(
                    conn, rec.environment_id, rec.id, owner, rec.version, values
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
                        rotated=rotated,
                    )
                fresh = await store.get(conn, rec.environment_id, rec.id)
        except DB_ERRORS as exc:
            last_exc = exc
            log.warning(
                "grant %s: storing refreshed tokens failed (%s); retrying",
                rec.id,
                type(exc).__name__,
            )
            continue
        if ok:
            assert fresh is not None
            return fresh
        if fresh is None or fresh.status != "active":
            # deleted (or marked invalid) while the provider was minting these tokens:
            # they must not outlive the grant at the provider either
            await _revoke_minted(rt, resolved, tokens, old_refresh_token, rec.id)
            if fresh is None:
                raise NotFound("no such grant")
            raise_for_status(fresh)
        if fresh.version != rec.version:
            log.warning(
                "grant %s: a newer token generation was written meanwhile; keeping it", rec.id
            )
            return fresh
        # same generation, still active, but another process holds a live lease: it is
        # presenting the refresh token we just spent; wait for it to finish, then write
        log.warning("grant %s: the refresh lease is held by another process; waiting", rec.id)
    log.error("grant %s: refreshed tokens could not be stored", rec.id)
    raise StoreUnavailable("the refreshed token could not be stored; retry shortly") from last_exc


async def _revoke_minted(
    rt: Runtime,
    resolved: ResolvedIntegration | None,
    tokens: TokenSet,
    old_refresh_token: str | None,
    grant_id: str,
) -> None:
    if resolved is None or not resolved.revocation_url:
        return
    if tokens.refresh_token and tokens.refresh_token != old_refresh_token:
        token, hint = tokens.refresh_token, "refresh_token"
    else:
        token, hint = tokens.access_token, "access_token"
    for attempt in range(3):
        try:
            await revoke_token(
                rt.token_http,
                resolved.revocation_url,
                resolved.client,
                token,
                hint,
                timeout=rt.settings.http_timeout,
            )
            log.info("grant %s: revoked the tokens minted while it was deleted", grant_id)
            return
        except ProviderUnavailable:
            await asyncio.sleep(0.5 * (attempt + 1))
        except OAuthErrorResponse as exc:
            log.warning("grant %s: the provider refused the revocation (%s)", grant_id, exc.error)
            return
    log.warning("grant %s: could not revoke the tokens minted while it was deleted", grant_id)


async def record_failure(
    rt: Runtime,
    rec: GrantRecord,
    owner: str,
    code: str,
    description: str | None,
    retry_after: float | None = None,
    *,
    retry_at: float | None = None,
    keep_lease: bool = False,
    count: bool = True,
) -> None:
    """Back off this grant (only while we hold its lease: never another process's)."""
    now = rt.clock.now()
    attempts = rec.refresh_attempts + 1 if count else rec.refresh_attempts
    if retry_at is None:
        retry_at = now + backoff(
            attempts, base=GRANT_BACKOFF_BASE, cap=GRANT_BACKOFF_CAP, retry_after=retry_after
        )
    try:
        async with rt.engine.begin() as conn:
            mine = await lease.fail(
                conn,
                rec.environment_id,
                rec.id,
                owner,
                {"refresh_attempts": attempts, "retry_at": retry_at},
                keep_lease=keep_lease,
            )
            if mine and count:
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
    except DB_ERRORS:
        log.warning("grant %s: could not record the refresh failure", rec.id)


async def integration_failed(
    rt: Runtime,
    rec: GrantRecord,
    owner: str,
    integ: IntegrationRecord,
    exc: OAuthErrorResponse,
) -> GrantkeeperError:
    """The provider refused the integration's client (``invalid_client``,
    ``unauthorized_client``): the integration backs off, the grant stays active; returns
    the error to raise."""
    now = rt.clock.now()
    retry_at = now + backoff(
        integ.failure_attempts + 1, base=INTEGRATION_BACKOFF_BASE, cap=INTEGRATION_BACKOFF_CAP
    )
    log.warning(
        "integration %s: the provider refuses its client (%s); grants stay active",
        integ.id,
        exc.error,
    )
    try:
        async with rt.engine.begin() as conn:
            await integration_store.record_failure(
                conn,
                integ.environment_id,
                integ.id,
                code=exc.error,
                description=exc.description,
                now=now,
                retry_at=retry_at,
            )
    except DB_ERRORS:
        log.warning("integration %s: could not record the failure", integ.id)
    await record_failure(rt, rec, owner, exc.error, exc.description, retry_at=retry_at)
    return IntegrationMisconfigured(
        f"the provider refuses the client of integration {integ.id!r} ({exc.error}); "
        "the grant stays active and is retried automatically",
        retry_after=max(1, math.ceil(retry_at - now)),
    )


async def integration_recovered(rt: Runtime, integ: IntegrationRecord) -> None:
    """The provider accepted the integration's client again: clear its ``failing`` state."""
    try:
        async with rt.engine.begin() as conn:
            await integration_store.clear_failure(conn, integ.environment_id, integ.id)
        log.info("integration %s: the provider accepts its client again", integ.id)
    except DB_ERRORS:
        log.warning("integration %s: could not clear the failure", integ.id)


async def mark_invalid(
    rt: Runtime, rec: GrantRecord, owner: str, exc: OAuthErrorResponse, progress: Progress
) -> GrantRecord:
    """A grant-level refusal (``invalid_grant``): ``invalid`` only if nobody stored a newer
    generation meanwhile (then that one is returned); one ``grant.invalid`` event."""
    now = rt.clock.now()
    description = exc.description or "the provider refused the refresh token"
    async with rt.engine.begin() as conn:
        marked = await lease.mark_invalid(
            conn,
            rec.environment_id,
            rec.id,
            owner,
            rec.version,
            {
                "failure_code": exc.error,
                "failure_description": description[:500],
                "failed_at": now,
                "refresh_due_at": None,
                "updated_at": now,
            },
        )
        fresh = await store.get(conn, rec.environment_id, rec.id)
        if fresh is None:
            raise NotFound("no such grant")
        if marked:
            progress.released = True
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
    if fresh.version != rec.version and fresh.access_token_ct is not None:
        # someone stored a newer refresh token meanwhile: ours was simply stale
        return fresh
    raise RefreshBusy("another process is refreshing this grant; retry shortly")
