"""The retention purge (worker housekeeping): what is no longer needed is deleted.

``GRANTKEEPER_WEBHOOK_RETENTION_DAYS`` (finished deliveries, then their events),
``GRANTKEEPER_CONNECT_SESSION_RETENTION_DAYS`` (ended sessions) and
``GRANTKEEPER_AUDIT_RETENTION_DAYS`` (sealed audit events, pruned behind the chain's
checkpoint, ``auditchain.prune``); 0 keeps forever. Each pass deletes at most
``GRANTKEEPER_PURGE_BATCH`` rows per statement, one short transaction each, and the worker
runs passes back to back while they find work, so a backlog drains without a long lock.
"""

from __future__ import annotations

import logging

from sqlalchemy import Delete
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper import auditchain
from grantkeeper.config import Settings
from grantkeeper.store import environments as env_store
from grantkeeper.store import retention as store
from grantkeeper.store.db import reading
from grantkeeper.vault import Vault

__all__ = ["DAY", "purge"]

log = logging.getLogger(__name__)

DAY = 86_400.0


async def _run(engine: AsyncEngine, stmt: Delete) -> int:
    async with engine.begin() as conn:
        return await store.run(conn, stmt)


async def purge(engine: AsyncEngine, vault: Vault, settings: Settings, now: float) -> int:
    """One pass: at most one batch of each kind; how many rows it deleted (0: none due)."""
    batch = settings.purge_batch
    deleted = 0
    if settings.webhook_retention_days > 0:
        cutoff = now - settings.webhook_retention_days * DAY
        # deliveries first: an event goes once none of its deliveries is left
        deleted += await _run(engine, store.finished_deliveries(cutoff, batch))
        deleted += await _run(engine, store.undelivered_events(cutoff, batch))
    if settings.connect_session_retention_days > 0:
        cutoff = now - settings.connect_session_retention_days * DAY
        deleted += await _run(engine, store.ended_sessions(now, cutoff, batch))
    if settings.audit_retention_days > 0:
        cutoff = now - settings.audit_retention_days * DAY
        async with reading(engine) as conn:
            envs = await env_store.list_all(conn)
        for env_id, _name, _created in envs:
            deleted += await auditchain.prune(
                engine, vault, env_id, cutoff=cutoff, now=now, batch=batch
            )
    if deleted:
        log.debug("retention purge deleted %d rows", deleted)
    return deleted
