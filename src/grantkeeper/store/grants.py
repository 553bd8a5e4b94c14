"""Grant rows: lookups always keyed by (environment, id); writes fenced by ``version``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import GrantRecord
from grantkeeper.store.tables import grants

__all__ = [
    "count_all_by_status",
    "count_by_status",
    "find_for_user",
    "get",
    "get_by_id_any_env",
    "insert_grant",
    "list_grants",
    "mark_revoked",
    "oldest_due",
    "update_fenced",
    "update_grant",
]


async def get(conn: AsyncConnection, environment_id: str, grant_id: str) -> GrantRecord | None:
    r = await conn.execute(
        select(grants).where(grants.c.environment_id == environment_id, grants.c.id == grant_id)
    )
    row = r.mappings().first()
    return to_record(GrantRecord, row) if row is not None else None


async def get_by_id_any_env(conn: AsyncConnection, grant_id: str) -> GrantRecord | None:
    """Only for the background worker, which acts for every environment."""
    r = await conn.execute(select(grants).where(grants.c.id == grant_id))
    row = r.mappings().first()
    return to_record(GrantRecord, row) if row is not None else None


async def find_for_user(
    conn: AsyncConnection,
    environment_id: str,
    integration_id: str,
    user_id: str,
    provider_account_id: str | None = None,
) -> list[GrantRecord]:
    q = select(grants).where(
        grants.c.environment_id == environment_id,
        grants.c.integration_id == integration_id,
        grants.c.user_id == user_id,
    )
    if provider_account_id is not None:
        q = q.where(grants.c.provider_account_id == provider_account_id)
    r = await conn.execute(q.order_by(grants.c.updated_at.desc()))
    return [to_record(GrantRecord, m) for m in r.mappings().all()]


async def insert_grant(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(grants).values(**values))


async def update_grant(
    conn: AsyncConnection, environment_id: str, grant_id: str, values: dict[str, Any]
) -> bool:
    r = await conn.execute(
        update(grants)
        .where(grants.c.environment_id == environment_id, grants.c.id == grant_id)
        .values(**values)
    )
    return r.rowcount > 0


async def update_fenced(
    conn: AsyncConnection,
    environment_id: str,
    grant_id: str,
    expected_version: int,
    values: dict[str, Any],
    *,
    require_status: str | None = None,
) -> bool:
    """Write only if nobody wrote a newer token generation meanwhile."""
    cond = [
        grants.c.environment_id == environment_id,
        grants.c.id == grant_id,
        grants.c.version == expected_version,
    ]
    if require_status is not None:
        cond.append(grants.c.status == require_status)
    r = await conn.execute(update(grants).where(*cond).values(**values))
    return r.rowcount > 0


async def mark_revoked(
    conn: AsyncConnection, environment_id: str, grant_id: str, now: float
) -> bool:
    """Destroy the stored secrets and mark the grant ``revoked``.

    The generation is bumped in SQL (never from an earlier read), which fences out a
    refresh in flight: its write requires the generation it read and ``active``.
    """
    r = await conn.execute(
        update(grants)
        .where(grants.c.environment_id == environment_id, grants.c.id == grant_id)
        .values(
            status="revoked",
            access_token_ct=None,
            refresh_token_ct=None,
            id_token_ct=None,
            credentials_ct=None,
            version=grants.c.version + 1,
            refresh_due_at=None,
            lease_owner=None,
            lease_until=None,
            revoked_at=now,
            updated_at=now,
        )
    )
    return r.rowcount > 0


async def list_grants(
    conn: AsyncConnection,
    environment_id: str,
    *,
    integration_id: str | None = None,
    integration_ids: Sequence[str] | None = None,
    user_id: str | None = None,
    status: str | None = None,
    limit: int = 10,
    offset: int = 0,
) -> tuple[list[GrantRecord], bool]:
    """One page and whether another follows."""
    q = select(grants).where(grants.c.environment_id == environment_id)
    if integration_id is not None:
        q = q.where(grants.c.integration_id == integration_id)
    if integration_ids is not None:
        q = q.where(grants.c.integration_id.in_(list(integration_ids)))
    if user_id is not None:
        q = q.where(grants.c.user_id == user_id)
    if status is not None:
        q = q.where(grants.c.status == status)
    q = q.order_by(grants.c.created_at.desc(), grants.c.id).limit(limit + 1).offset(offset)
    rows = [to_record(GrantRecord, m) for m in (await conn.execute(q)).mappings().all()]
    return rows[:limit], len(rows) > limit


async def count_by_status(conn: AsyncConnection, environment_id: str) -> dict[str, int]:
    r = await conn.execute(
        select(grants.c.status, func.count())
        .where(grants.c.environment_id == environment_id)
        .group_by(grants.c.status)
    )
    return {s: int(n) for s, n in r.all()}


async def count_all_by_status(conn: AsyncConnection) -> dict[str, int]:
    r = await conn.execute(select(grants.c.status, func.count()).group_by(grants.c.status))
    return {s: int(n) for s, n in r.all()}


async def oldest_due(conn: AsyncConnection) -> float | None:
    r = await conn.execute(
        select(func.min(grants.c.refresh_due_at)).where(
            grants.c.status == "active", grants.c.refresh_due_at.is_not(None)
        )
    )
    v = r.scalar()
    return float(v) if v is not None else None
