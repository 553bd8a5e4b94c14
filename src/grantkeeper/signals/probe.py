"""Grant health probes: notice a grant revoked at a provider that sends no notification.

An integration with ``health_probe_interval`` has each of its active grants probed once
per interval, spread over it by the grant id so a large integration does not probe in
bursts. A probe makes the entry's cheap authenticated call (the userinfo endpoint of an
OpenID provider) with the grant's access token (refreshed first when due, like a token
read). A 401 is confirmed by one refresh: a grant revoked at the provider fails it and the
refresh engine marks it ``invalid`` with one ``grant.invalid``; a grant without a refresh
token that gets a 401 is ``revoked_at_provider`` outright. Any other answer changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp

from grantkeeper.errors import GrantInvalid, GrantkeeperError, GrantRevoked
from grantkeeper.grants import open_token
from grantkeeper.integrations import ResolvedIntegration, resolve
from grantkeeper.netguard import check_url
from grantkeeper.refresh.engine import ensure_fresh
from grantkeeper.runtime import Runtime
from grantkeeper.signals.revoked import revoked_at_provider
from grantkeeper.store import integrations as integration_store
from grantkeeper.store import signals as store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord

__all__ = ["probe_due", "probe_url", "spread"]

log = logging.getLogger(__name__)

_SCHEDULE_BATCH = 500
_MIN_TTL = 60.0


def spread(grant_id: str) -> float:
    """A stable fraction in [0, 1) per grant: where in the interval its probes fall."""
    return int.from_bytes(hashlib.sha256(grant_id.encode()).digest()[:4], "big") / 2**32


def probe_url(resolved: ResolvedIntegration) -> str | None:
    """The cheap authenticated GET that proves a grant still works."""
    return resolved.userinfo_url


async def _call(rt: Runtime, url: str, access_token: str) -> int:
    async with rt.http.get(
        url,
        headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=rt.settings.http_timeout),
    ) as resp:
        await resp.content.readany()  # a glance is enough; the status is the answer
        return resp.status


async def _revoked_outright(rt: Runtime, rec: GrantRecord) -> None:
    async with rt.engine.begin() as conn:
        await revoked_at_provider(
            conn,
            rec,
            reason="the provider refused the access token (health probe)",
            actor="system:probe",
            now=rt.clock.now(),
        )


async def _probe(rt: Runtime, rec: GrantRecord) -> str:
    async with reading(rt.engine) as conn:
        integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    if integ is None:
        return "skipped"
    resolved = await resolve(rt, integ)
    url = probe_url(resolved)
    if url is None:
        return "unsupported"
    check_url(url, allow_private=rt.settings.allow_private_networks, what="probe url")
    try:
        current = await ensure_fresh(rt, rec, min_ttl=_MIN_TTL, force=False)
    except (GrantInvalid, GrantRevoked):
        return "invalid"
    token = open_token(rt.vault, current, "access_token")
    if token is None:
        return "skipped"
    status = await _call(rt, url, token)
    if status != 401:
        return "ok" if status < 400 else "error"
    if current.refresh_token_ct is None:
        await _revoked_outright(rt, current)
        return "revoked"
    try:  # a 401 is only a hint: one refresh tells a revoked grant from a revoked token
        renewed = await ensure_fresh(rt, current, min_ttl=_MIN_TTL, force=True)
    except (GrantInvalid, GrantRevoked):
        return "revoked"
    token = open_token(rt.vault, renewed, "access_token")
    if token is not None and await _call(rt, url, token) == 401:
        log.warning("grant %s: the provider refuses even a fresh access token", rec.id)
        return "refused"
    return "ok"


async def probe_due(rt: Runtime) -> int:
    """One pass: schedule new grants of probed integrations, run the probes that are due."""
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        unscheduled = await store.unscheduled_probe_grants(conn, _SCHEDULE_BATCH)
        await store.schedule_probes(
            conn, [(gid, now + interval * spread(gid)) for gid, _env, interval in unscheduled]
        )
        claimed: list[GrantRecord] = []
        for rec, interval in await store.due_probes(conn, now, rt.settings.worker_batch):
            assert rec.probe_due_at is not None
            following = now + interval if interval else None
            if await store.claim_probe(conn, rec.id, rec.probe_due_at, following):
                claimed.append(rec)
    if not claimed:
        return 0
    gate = asyncio.Semaphore(rt.settings.probe_concurrency)

    async def one(rec: GrantRecord) -> None:
        async with gate:
            try:
                outcome = await _probe(rt, rec)
            except GrantkeeperError as exc:
                outcome = "error"
                log.info("health probe of grant %s: %s", rec.id, exc.code)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = "error"
                log.info("health probe of grant %s: %s", rec.id, type(exc).__name__)
            rt.metrics.probes.labels(rec.provider, outcome).inc()

    await asyncio.gather(*(one(r) for r in claimed))
    return len(claimed)
