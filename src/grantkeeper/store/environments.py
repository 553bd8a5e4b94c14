"""Environments: the isolation unit."""

from __future__ import annotations

import uuid

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import api_keys, environments

__all__ = ["by_name", "count_keys", "create", "list_all"]


async def create(conn: AsyncConnection, name: str, now: float) -> str:
    env_id = str(uuid.uuid4())
    await conn.execute(insert(environments).values(id=env_id, name=name, created_at=now))
    return env_id


async def by_name(conn: AsyncConnection, name: str) -> str | None:
    r = await conn.execute(select(environments.c.id).where(environments.c.name == name))
    return r.scalar_one_or_none()


async def list_all(conn: AsyncConnection) -> list[tuple[str, str, float]]:
    r = await conn.execute(
        select(environments.c.id, environments.c.name, environments.c.created_at).order_by(
            environments.c.created_at
        )
    )
    return [(a, b, c) for a, b, c in r.all()]


async def count_keys(conn: AsyncConnection) -> int:
    r = await conn.execute(select(func.count()).select_from(api_keys))
    return int(r.scalar_one())
