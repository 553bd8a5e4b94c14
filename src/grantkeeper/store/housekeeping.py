"""Destroying what is no longer needed: expired one-time exports and old connect secrets."""

from __future__ import annotations

from sqlalchemy import and_, or_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import connect_sessions

__all__ = ["purge_expired"]


async def purge_expired(conn: AsyncConnection, now: float) -> None:
    await conn.execute(
        update(connect_sessions)
        .where(
            connect_sessions.c.export_status == "available",
            connect_sessions.c.export_expires_at <= now,
        )
        .values(export_ct=None, export_status="expired")
    )
    # sessions that were never completed: the PKCE verifier is useless now
    await conn.execute(
        update(connect_sessions)
        .where(
            connect_sessions.c.verifier_ct.is_not(None),
            or_(
                connect_sessions.c.expires_at <= now,
                and_(connect_sessions.c.status.in_(("completed", "failed"))),
            ),
        )
        .values(verifier_ct=None)
    )
