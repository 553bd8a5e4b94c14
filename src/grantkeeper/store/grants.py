"""Grant rows: lookups always keyed by (environment, id); writes fenced by ``version``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import GrantRecord
from grantkeeper.store.tables import grants

__all__ = [
    "claim_due",
    "claim_lease",
    "count_all_by_status",
    "count_by_status",
    "find_for_user",
    "get",
    "get_by_id_any_env",
    "insert_grant",
    "list_grants",
    "oldest_due",
    "release_lease",
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


async def claim_lease(
    conn: AsyncConnection, environment_id: str, grant_id: str, owner: str, now: float, until: float
) -> bool:
    """Take the cross-process refresh lease if it is free or expired (a conditional UPDATE)."""
    r = await conn.execute(
        update(grants)
        .where(
            grants.c.environment_id == environment_id,
            grants.c.id == grant_id,
            grants.c.status == "active",
            or_(
                grants.c.lease_until.is_(None),
                grants.c.lease_until < now,
                grants.c.lease_owner == owner,
            ),
        )
        .values(lease_owner=owner, lease_until=until)
    )
    return r.rowcount > 0


async def release_lease(
    conn: AsyncConnection, environment_id: str, grant_id: str, owner: str
) -> None:
    await conn.execute(
        update(grants)
        .where(
            grants.c.environment_id == environment_id,
            grants.c.id == grant_id,
            grants.c.lease_owner == owner,
        )
        .values(lease_owner=None, lease_until=None)
    )


async def claim_due(
    conn: AsyncConnection, owner: str, now: float, until: float, limit: int
) -> list[tuple[str, str, int, str]]:
    """Claim up to ``limit`` grants due for proactive refresh: [(environment_id, id, version, provider)].

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` so concurrent workers take disjoint
    sets; SQLite: the write lock taken at BEGIN serialises claimers.
    """
    due = and_(
        grants.c.status == "active",
        grants.c.refresh_due_at.is_not(None),
        grants.c.refresh_due_at <= now,
        or_(grants.c.retry_at.is_(None), grants.c.retry_at <= now),
        or_(grants.c.lease_until.is_(None), grants.c.lease_until < now),
    )
    sub = select(grants.c.id).where(due).order_by(grants.c.refresh_due_at).limit(limit)
    if conn.dialect.name == "postgresql":
        sub = sub.with_for_update(skip_locked=True)
    ids = [r[0] for r in (await conn.execute(sub)).all()]
    if not ids:
        return []
    r = await conn.execute(
        update(grants)
        .where(grants.c.id.in_(ids), due)
        .values(lease_owner=owner, lease_until=until)
        .returning(grants.c.environment_id, grants.c.id, grants.c.version, grants.c.provider)
    )
    return [(a, b, c, d) for a, b, c, d in r.all()]


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
