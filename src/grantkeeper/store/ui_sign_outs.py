"""Admin UI sessions ended by sign-out (by the hash of their nonce, until they expire)."""

from __future__ import annotations

import hashlib

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import ui_sign_outs

__all__ = ["is_signed_out", "record_sign_out"]


def _h(nonce: str) -> bytes:
    return hashlib.sha256(nonce.encode()).digest()


async def record_sign_out(
    conn: AsyncConnection, nonce: str, *, expires_at: float, now: float
) -> None:
    """Mark the session ended; rows of sessions that expired anyway are dropped on the way."""
    await conn.execute(delete(ui_sign_outs).where(ui_sign_outs.c.expires_at < now))
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        ins(ui_sign_outs)
        .values(nonce_hash=_h(nonce), expires_at=expires_at)
        .on_conflict_do_nothing()  # a second sign-out of the same session
    )


async def is_signed_out(conn: AsyncConnection, nonce: str) -> bool:
    got = await conn.scalar(
        select(ui_sign_outs.c.nonce_hash).where(ui_sign_outs.c.nonce_hash == _h(nonce))
    )
    return got is not None
