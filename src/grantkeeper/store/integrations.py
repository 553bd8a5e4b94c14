"""Integration rows. The client secret arrives already sealed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import IntegrationRecord
from grantkeeper.store.tables import grants, integrations

__all__ = [
    "clear_failure",
    "delete_integration",
    "get",
    "has_grants",
    "list_integrations",
    "record_failure",
    "upsert",
]


async def get(
    conn: AsyncConnection, environment_id: str, integration_id: str
) -> IntegrationRecord | None:
    r = await conn.execute(
        select(integrations).where(
            integrations.c.environment_id == environment_id, integrations.c.id == integration_id
        )
    )
    row = r.mappings().first()
    return to_record(IntegrationRecord, row) if row is not None else None


async def list_integrations(
    conn: AsyncConnection, environment_id: str, only: tuple[str, ...] | None = None
) -> list[IntegrationRecord]:
    q = select(integrations).where(integrations.c.environment_id == environment_id)
    if only is not None:
        q = q.where(integrations.c.id.in_(only))
    r = await conn.execute(q.order_by(integrations.c.id))
    return [to_record(IntegrationRecord, m) for m in r.mappings().all()]


async def upsert(
    conn: AsyncConnection,
    environment_id: str,
    integration_id: str,
    values: dict[str, Any],
    now: float,
) -> bool:
    """Insert or update; returns True when the row was created."""
    r = await conn.execute(
        update(integrations)
        .where(integrations.c.environment_id == environment_id, integrations.c.id == integration_id)
        .values(**values, updated_at=now)
    )
    if r.rowcount:
        return False
    await conn.execute(
        insert(integrations).values(
            environment_id=environment_id,
            id=integration_id,
            created_at=now,
            updated_at=now,
            **values,
        )
    )
    return True


async def has_grants(conn: AsyncConnection, environment_id: str, integration_id: str) -> bool:
    q = select(
        exists().where(
            grants.c.environment_id == environment_id,
            grants.c.integration_id == integration_id,
            grants.c.status != "revoked",
        )
    )
    return bool((await conn.execute(q)).scalar())


async def delete_integration(
    conn: AsyncConnection, environment_id: str, integration_id: str
) -> bool:
    r = await conn.execute(
        delete(integrations).where(
            integrations.c.environment_id == environment_id, integrations.c.id == integration_id
        )
    )
    return r.rowcount > 0


async def record_failure(
    conn: AsyncConnection,
    environment_id: str,
    integration_id: str,
    *,
    code: str,
    description: str | None,
    now: float,
    retry_at: float,
) -> None:
    """The provider refused this integration's client; the attempt count grows in SQL."""
    await conn.execute(
        update(integrations)
        .where(integrations.c.environment_id == environment_id, integrations.c.id == integration_id)
        .values(
            failure_code=code,
            failure_description=(description or "")[:500] or None,
            failed_at=now,
            retry_at=retry_at,
            failure_attempts=integrations.c.failure_attempts + 1,
        )
    )


async def clear_failure(conn: AsyncConnection, environment_id: str, integration_id: str) -> None:
    """The provider accepted the client again: back to ``ok``."""
    await conn.execute(
        update(integrations)
        .where(
            integrations.c.environment_id == environment_id,
            integrations.c.id == integration_id,
            integrations.c.failure_code.is_not(None),
        )
        .values(
            failure_code=None,
            failure_description=None,
            failed_at=None,
            retry_at=None,
            failure_attempts=0,
        )
    )
