"""Grant health probes: notice a grant revoked at a provider that sends no notification.

An integration with ``health_probe_interval`` has each of its active grants probed once
per interval, spread over it by the grant id so a large integration does not probe in
bursts. A probe makes the entry's cheap authenticated call (the userinfo endpoint of an
OpenID provider) with the grant's access token (refreshed first when due, like a token
read). A 401 is confirmed by one refresh: a grant revoked at the provider fails it and the
refresh engine marks it ``invalid`` with one ``grant.invalid``; a grant without a refresh
token that gets a 401 is ``revoked_at_provider`` outright. Any other answer changes nothing.

Kinds other than the code flow have no userinfo endpoint: their probe is the integration's
``verify_request`` (``Kind.probe``), stamped as the proxy stamps. A refused credential of
a kind without an access token (``api_key``, ``basic``, ``oauth1``: 401 or 403) is
``revoked_at_provider`` outright; a refused minted token is confirmed by one forced mint,
which the refresh engine turns into ``invalid`` when the provider refuses it. A minting
kind without a ``verify_request`` is probed by the forced mint alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp

from grantkeeper.errors import GrantInvalid, GrantkeeperError, GrantRevoked
from grantkeeper.grants import open_token
from grantkeeper.integrations import ResolvedIntegration, resolve
from grantkeeper.kinds import kind_for
from grantkeeper.kinds.config import context, kind_config, open_credentials
from grantkeeper.netguard import check_url
from grantkeeper.providers.catalog import CODE_MODES
from grantkeeper.refresh.engine import ensure_fresh
from grantkeeper.runtime import Runtime
from grantkeeper.signals.revoked import revoked_at_provider
from grantkeeper.store import integrations as integration_store
from grantkeeper.store import signals as store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord, IntegrationRecord

__all__ = ["probe_due", "probe_url", "spread"]

log = logging.getLogger(__name__)

_SCHEDULE_BATCH = 500
_MIN_TTL = 60.0
#: what a verification request answers for a credential the provider no longer accepts
_REFUSED = frozenset({401, 403})


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
    if integ.provider in rt.catalog and rt.catalog.get(integ.provider).auth_mode not in CODE_MODES:
        return await _probe_kind(rt, rec, integ)
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


async def _probe_kind(rt: Runtime, rec: GrantRecord, integ: IntegrationRecord) -> str:
    """The probe of a kind other than the code flow (see the module docstring)."""
    cfg = kind_config(rt, integ)
    kind = kind_for(cfg.mode)
    ctx = context(rt)
    creds = open_credentials(rt.vault, rec)
    if not kind.has_access_token:
        status = await kind.probe(ctx, cfg, creds, None)
        if status is None:
            return "unsupported"
        if status in _REFUSED:
            await _revoked_outright(rt, rec)
            return "revoked"
        return "ok" if status < 400 else "error"
    only_mint = cfg.verify_request is None
    try:
        current = await ensure_fresh(rt, rec, min_ttl=_MIN_TTL, force=only_mint)
    except (GrantInvalid, GrantRevoked):
        return "revoked" if only_mint else "invalid"
    if only_mint:
        return "ok"
    status = await kind.probe(ctx, cfg, creds, open_token(rt.vault, current, "access_token"))
    if status not in _REFUSED:
        return "ok" if status is not None and status < 400 else "error"
    try:  # a refused token is only a hint: a forced mint tells a withdrawn credential
        renewed = await ensure_fresh(rt, current, min_ttl=_MIN_TTL, force=True)
    except (GrantInvalid, GrantRevoked):
        return "revoked"
    status = await kind.probe(ctx, cfg, creds, open_token(rt.vault, renewed, "access_token"))
    if status in _REFUSED:
        log.warning("grant %s: the provider refuses even a freshly minted token", rec.id)
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
