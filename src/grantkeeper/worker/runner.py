"""The worker loop, run inside ``serve`` or alone by ``grantkeeper worker``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from grantkeeper.auditchain import Sealer
from grantkeeper.refresh.proactive import run_proactive
from grantkeeper.retention import ensure_months, purge
from grantkeeper.revocation import retry_pending
from grantkeeper.runtime import Runtime
from grantkeeper.signals.expiry import warn_expiring
from grantkeeper.signals.probe import probe_due
from grantkeeper.store.housekeeping import purge_expired
from grantkeeper.store.signals import purge_event_ids
from grantkeeper.webhooks.dispatcher import deliver_due

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


async def _loop(
    name: str, stop: asyncio.Event, interval: float, step: Callable[[], Awaitable[int]]
) -> None:
    while not stop.is_set():
        busy = 0
        try:
            busy = await step()
        except Exception as exc:  # noqa: BLE001 - keep the worker alive; the next pass retries
            log.error("worker %s pass failed: %s", name, type(exc).__name__)
        if busy:
            continue  # more may be waiting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def run_worker(rt: Runtime, stop: asyncio.Event) -> None:
    s = rt.settings

    async def proactive() -> None:
        # a pipeline, not a sweep: it claims while earlier claims are still in flight
        while not stop.is_set():
            try:
                await run_proactive(rt, stop)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive
                log.error("worker refresh pipeline failed: %s", type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=s.worker_interval)
            if rt.draining:
                return

    async def webhook_step() -> int:
        return await deliver_due(rt)

    async def revocation_step() -> int:
        # provider revocations a DELETE could not finish (the outbox)
        return await retry_pending(rt)

    async def housekeeping_step() -> int:
        async with rt.engine.begin() as conn:
            await purge_expired(conn, rt.clock.now())
            await purge_event_ids(conn, rt.clock.now())
        # PostgreSQL: audit partitions for this month and the next ones
        await ensure_months(rt.engine, rt.clock.now())
        return 0

    async def retention_step() -> int:
        # bounded batches; the loop runs again at once while a pass found work
        return await purge(rt.engine, rt.vault, s, rt.clock.now())

    async def expiry_step() -> int:
        return await warn_expiring(rt)

    async def probe_step() -> int:
        return await probe_due(rt)

    sealer = Sealer(rt.vault)

    async def audit_chain_step() -> int:
        # links audit events into the tamper-evident chain, off the request path; back at
        # once only when a batch was full (else every few due events would be a pass)
        linked = await sealer.step(rt.engine, rt.clock.now())
        return linked if sealer.more else 0

    log.info("worker started (%s)", rt.instance_id)
    await asyncio.gather(
        proactive(),
        _loop("webhooks", stop, s.worker_interval, webhook_step),
        _loop("revocations", stop, s.worker_interval, revocation_step),
        _loop("housekeeping", stop, 60.0, housekeeping_step),
        _loop("retention", stop, s.purge_interval, retention_step),
        _loop("audit-chain", stop, s.worker_interval, audit_chain_step),
        _loop("expiry-warnings", stop, 60.0, expiry_step),
        _loop("health-probes", stop, s.worker_interval, probe_step),
    )
