"""Audit events: append-only; the hash chain is filled by ``audit.seal_chain``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import audit_events

__all__ = ["append", "list_events"]


async def append(
    conn: AsyncConnection,
    *,
    environment_id: str,
    actor: str,
    action: str,
    now: float,
    grant_id: str | None = None,
    integration_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        insert(audit_events).values(
            environment_id=environment_id,
            at=now,
            actor=actor,
            action=action,
            grant_id=grant_id,
            integration_id=integration_id,
            detail=detail or {},
        )
    )


async def list_events(
    conn: AsyncConnection,
    environment_id: str,
    *,
    grant_id: str | None = None,
    integration_ids: frozenset[str] | None = None,
    limit: int = 50,
    offset: int = 0,
    after_id: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    q = select(audit_events).where(audit_events.c.environment_id == environment_id)
    if grant_id is not None:
        q = q.where(audit_events.c.grant_id == grant_id)
    if integration_ids is not None:
        # a key limited to some integrations sees only their events
        q = q.where(audit_events.c.integration_id.in_(sorted(integration_ids)))
    if after_id is not None:
        q = q.where(audit_events.c.id > after_id).order_by(audit_events.c.id)
    else:
        q = q.order_by(audit_events.c.id.desc())
    q = q.limit(limit + 1).offset(offset)
    rows = [dict(m) for m in (await conn.execute(q)).mappings().all()]
    return rows[:limit], len(rows) > limit
