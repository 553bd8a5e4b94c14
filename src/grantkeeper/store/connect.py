"""Connect sessions: the state of one OAuth dance."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import ConnectSessionRecord
from grantkeeper.store.tables import connect_sessions

__all__ = [
    "by_url_token",
    "claim_by_state",
    "claim_export",
    "get",
    "insert_session",
    "update_session",
]


async def insert_session(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(connect_sessions).values(**values))


async def get(
    conn: AsyncConnection, environment_id: str, session_id: str
) -> ConnectSessionRecord | None:
    r = await conn.execute(
        select(connect_sessions).where(
            connect_sessions.c.environment_id == environment_id, connect_sessions.c.id == session_id
        )
    )
    row = r.mappings().first()
    return to_record(ConnectSessionRecord, row) if row is not None else None


async def by_url_token(conn: AsyncConnection, token_hash: bytes) -> ConnectSessionRecord | None:
    r = await conn.execute(
        select(connect_sessions).where(connect_sessions.c.url_token_hash == token_hash)
    )
    row = r.mappings().first()
    return to_record(ConnectSessionRecord, row) if row is not None else None


async def claim_by_state(
    conn: AsyncConnection, state_hash: bytes, now: float
) -> ConnectSessionRecord | None:
    """Atomically move the session owning this state from authorizing to exchanging.

    The conditional UPDATE makes ``state`` single-use even against two
    concurrent callbacks with the same code and state.
    """
    r = await conn.execute(
        update(connect_sessions)
        .where(
            connect_sessions.c.state_hash == state_hash,
            connect_sessions.c.status == "authorizing",
            connect_sessions.c.expires_at > now,
        )
        .values(status="exchanging")
        .returning(*connect_sessions.c)
    )
    row = r.mappings().first()
    return to_record(ConnectSessionRecord, row) if row is not None else None


async def update_session(
    conn: AsyncConnection,
    session_id: str,
    values: dict[str, Any],
    *,
    expect_status: str | None = None,
) -> bool:
    q = update(connect_sessions).where(connect_sessions.c.id == session_id)
    if expect_status is not None:
        q = q.where(connect_sessions.c.status == expect_status)
    r = await conn.execute(q.values(**values))
    return r.rowcount > 0


async def claim_export(conn: AsyncConnection, session_id: str, now: float) -> bool:
    """Take the one-time export: only one caller ever sees ``available`` turn ``retrieved``."""
    r = await conn.execute(
        update(connect_sessions)
        .where(
            connect_sessions.c.id == session_id,
            connect_sessions.c.export_status == "available",
            connect_sessions.c.export_expires_at > now,
        )
        .values(export_ct=None, export_status="retrieved")
    )
    return r.rowcount > 0
