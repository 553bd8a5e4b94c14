"""The revocation outbox: provider revocations a DELETE left unfinished (see revocation.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import revocation_outbox

__all__ = ["claim_due", "enqueue", "finish", "latest_for_grant", "retry_later"]


async def enqueue(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(revocation_outbox).values(**values))


async def claim_due(
    conn: AsyncConnection, now: float, *, limit: int, lease: float
) -> list[dict[str, Any]]:
    """Pending rows that are due, each leased to the caller (a conditional UPDATE per row,
    so two workers never work on the same row at once)."""
    free = or_(revocation_outbox.c.lease_until.is_(None), revocation_outbox.c.lease_until < now)
    rows = (
        (
            await conn.execute(
                select(revocation_outbox)
                .where(
                    revocation_outbox.c.status == "pending",
                    revocation_outbox.c.next_attempt_at <= now,
                    free,
                )
                .order_by(revocation_outbox.c.next_attempt_at)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    claimed: list[dict[str, Any]] = []
    for row in rows:
        r = await conn.execute(
            update(revocation_outbox)
            .where(and_(revocation_outbox.c.id == row["id"], free))
            .values(lease_until=now + lease)
        )
        if r.rowcount:
            claimed.append(dict(row))
    return claimed


async def finish(
    conn: AsyncConnection, row_id: str, status: str, now: float, error: str | None = None
) -> None:
    """Done for good: the token is destroyed."""
    await conn.execute(
        update(revocation_outbox)
        .where(revocation_outbox.c.id == row_id)
        .values(
            status=status,
            token_ct=None,
            done_at=now,
            lease_until=None,
            next_attempt_at=None,
            last_error=error,
        )
    )


async def retry_later(
    conn: AsyncConnection, row_id: str, *, attempts: int, at: float, error: str
) -> None:
    await conn.execute(
        update(revocation_outbox)
        .where(revocation_outbox.c.id == row_id)
        .values(attempts=attempts, next_attempt_at=at, lease_until=None, last_error=error[:200])
    )


async def latest_for_grant(conn: AsyncConnection, environment_id: str, grant_id: str) -> str | None:
    """The status of the grant's newest outbox row (None: the DELETE needed none)."""
    r = await conn.execute(
        select(revocation_outbox.c.status)
        .where(
            revocation_outbox.c.environment_id == environment_id,
            revocation_outbox.c.grant_id == grant_id,
        )
        .order_by(revocation_outbox.c.created_at.desc())
        .limit(1)
    )
    status = r.scalar_one_or_none()
    return None if status is None else str(status)
