"""The retention purge's statements: each deletes one bounded batch, found through an index.

Every statement is ``DELETE ... WHERE id IN (SELECT id ... LIMIT n)``: a batch is one short
transaction (no long lock, no huge transaction), and the inner SELECT is an index range
scan (``tests/contract/test_retention.py`` checks the plans on PostgreSQL). Nothing that is
still needed matches: a pending delivery, an event that still has a delivery, a connect
session that can still be used or still holds its one-time token export.
"""

from __future__ import annotations

from sqlalchemy import Delete, delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import connect_sessions, webhook_deliveries, webhook_events

__all__ = ["ended_sessions", "finished_deliveries", "run", "undelivered_events"]

#: final delivery states (``pending`` is still being retried)
_FINISHED = ("succeeded", "failed")


def finished_deliveries(cutoff: float, limit: int) -> Delete:
    """Deliveries that succeeded or gave up, created before ``cutoff``."""
    d = webhook_deliveries
    ids = (
        select(d.c.id)
        .where(d.c.status.in_(_FINISHED), d.c.created_at < cutoff)
        .limit(limit)
        .scalar_subquery()
    )
    return delete(d).where(d.c.id.in_(ids))


def undelivered_events(cutoff: float, limit: int) -> Delete:
    """Events created before ``cutoff`` none of whose deliveries is left (the finished ones
    go first; a pending one keeps its event)."""
    e, d = webhook_events, webhook_deliveries
    ids = (
        select(e.c.id)
        .where(e.c.created_at < cutoff, ~exists().where(d.c.event_id == e.c.id))
        .limit(limit)
        .scalar_subquery()
    )
    return delete(e).where(e.c.id.in_(ids))


def ended_sessions(now: float, cutoff: float, limit: int) -> Delete:
    """Connect sessions that expired before ``cutoff`` (so long unusable) and hold no
    one-time token export that is still available."""
    s = connect_sessions
    ids = (
        select(s.c.id)
        .where(
            s.c.expires_at < cutoff,
            or_(
                s.c.export_status != "available",
                s.c.export_expires_at.is_(None),
                s.c.export_expires_at <= now,
            ),
        )
        .limit(limit)
        .scalar_subquery()
    )
    return delete(s).where(s.c.id.in_(ids))


async def run(conn: AsyncConnection, stmt: Delete) -> int:
    """Run one batch; how many rows it deleted."""
    return int((await conn.execute(stmt)).rowcount or 0)
