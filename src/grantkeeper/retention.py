"""The retention purge (worker housekeeping): what is no longer needed is deleted.

``GRANTKEEPER_WEBHOOK_RETENTION_DAYS`` (finished deliveries, then their events),
``GRANTKEEPER_CONNECT_SESSION_RETENTION_DAYS`` (ended sessions) and
``GRANTKEEPER_AUDIT_RETENTION_DAYS`` (sealed audit events, pruned behind the chain's
checkpoint, ``auditchain.prune``); 0 keeps forever. Each pass deletes at most
``GRANTKEEPER_PURGE_BATCH`` rows per statement, one short transaction each, and the worker
runs passes back to back while they find work, so a backlog drains without a long lock.

On PostgreSQL ``audit_events`` is partitioned by month (``store.auditparts``): the worker's
housekeeping keeps months created ahead (:func:`ensure_months`), and audit retention drops
whole expired months
(``auditchain.prune_months``); rows are deleted one by one only where no month holds them
(the default partition).
"""

from __future__ import annotations

import logging

from sqlalchemy import Delete, text
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper import auditchain
from grantkeeper.config import Settings
from grantkeeper.store import audit as audit_store
from grantkeeper.store import auditparts
from grantkeeper.store import environments as env_store
from grantkeeper.store import retention as store
from grantkeeper.store.db import reading
from grantkeeper.vault import Vault

__all__ = ["DAY", "ensure_months", "purge"]

log = logging.getLogger(__name__)

DAY = 86_400.0


async def _run(engine: AsyncEngine, stmt: Delete) -> int:
    async with engine.begin() as conn:
        return await store.run(conn, stmt)


async def ensure_months(engine: AsyncEngine, now: float) -> list[auditparts.Month]:
    """PostgreSQL: create the audit partitions of this month and the next ones where missing."""
    if engine.dialect.name != "postgresql":
        return []
    async with reading(engine) as conn:
        have = set(await auditparts.list_months(conn))
    if all(m in have for m in auditparts.wanted(now)):
        return []
    async with engine.begin() as conn:
        # never queue for long behind a long transaction (inserts would queue behind us)
        await conn.execute(text("SET LOCAL lock_timeout = '2s'"))
        await audit_store.lock_all_chains(conn)  # one creator at a time
        made = await auditparts.ensure_ahead(conn, now)
    if made:
        log.info("created audit partitions %s", ", ".join(m.name for m in made))
    return made


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
        if engine.dialect.name == "postgresql":
            deleted += await auditchain.prune_months(engine, vault, cutoff=cutoff, now=now)
            async with reading(engine) as conn:
                months = await auditparts.list_months(conn)
            # rows only where no month holds them (older than every month: the default
            # partition); the months go whole, once expired
            if months:
                cutoff = min(cutoff, months[0].start)
        async with reading(engine) as conn:
            envs = await env_store.list_all(conn)
        for env_id, _name, _created in envs:
            deleted += await auditchain.prune(
                engine, vault, env_id, cutoff=cutoff, now=now, batch=batch
            )
    if deleted:
        log.debug("retention purge deleted %d rows", deleted)
    return deleted
