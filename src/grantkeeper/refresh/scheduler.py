"""Proactive refresh: claim due grants and refresh them before callers need to wait.

Workers claim disjoint batches (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
write lock on SQLite), lease them, and refresh with a global and a
per-provider concurrency cap. Each refresh carries the version seen at claim
time, so a grant refreshed meanwhile by anyone else is not refreshed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import defaultdict

from grantkeeper.errors import GrantkeeperError
from grantkeeper.refresh import lease
from grantkeeper.refresh.engine import lease_budget, refresh
from grantkeeper.runtime import Runtime

__all__ = ["refresh_due"]

log = logging.getLogger(__name__)


async def refresh_due(rt: Runtime) -> int:
    """One sweep; returns how many grants were attempted."""
    s = rt.settings
    if rt.draining:
        return 0
    now = rt.clock.now()
    owner = f"{rt.instance_id}:sweep:{secrets.token_hex(3)}"
    async with rt.engine.begin() as conn:
        claimed = await lease.claim_due(conn, owner, now, lease_budget(rt), s.worker_batch)
    if not claimed:
        return 0
    overall = asyncio.Semaphore(s.worker_concurrency)
    per_provider: defaultdict[str, asyncio.Semaphore] = defaultdict(
        lambda: asyncio.Semaphore(s.worker_provider_concurrency)
    )

    async def one(env: str, grant_id: str, version: int, provider: str) -> None:
        started = False
        try:
            async with overall, per_provider[provider]:
                if rt.draining:
                    # stopping: not sent to the provider yet, so give the lease back
                    async with rt.engine.begin() as conn:
                        await lease.release(conn, env, grant_id, owner)
                    return
                started = True
                await refresh(
                    rt, env, grant_id, seen_version=version, trigger="proactive", lease_owner=owner
                )
        except GrantkeeperError as exc:
            log.info("proactive refresh of grant %s: %s", grant_id, exc.code)
        except asyncio.CancelledError:
            if not started:
                # cancelled while queued: the lease was never used at a provider
                with contextlib.suppress(Exception):
                    await asyncio.shield(_give_back(env, grant_id))
            raise
        except Exception as exc:  # noqa: BLE001 - one grant must not stop the sweep
            log.error("proactive refresh of grant %s failed: %s", grant_id, type(exc).__name__)

    async def _give_back(env: str, grant_id: str) -> None:
        async with rt.engine.begin() as conn:
            await lease.release(conn, env, grant_id, owner)

    await asyncio.gather(*(one(*c) for c in claimed))
    return len(claimed)
