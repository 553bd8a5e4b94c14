"""API key rows (hash only)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import ApiKeyRecord
from grantkeeper.store.tables import api_keys

__all__ = ["get", "insert_key", "list_keys", "revoke"]


async def insert_key(
    conn: AsyncConnection,
    *,
    key_id: str,
    environment_id: str,
    name: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    integration_ids: Sequence[str] | None,
    now: float,
) -> None:
    await conn.execute(
        insert(api_keys).values(
            id=key_id,
            environment_id=environment_id,
            name=name,
            secret_hash=secret_hash,
            scopes=list(scopes),
            integration_ids=list(integration_ids) if integration_ids is not None else None,
            created_at=now,
        )
    )


async def get(conn: AsyncConnection, key_id: str) -> ApiKeyRecord | None:
    r = await conn.execute(select(api_keys).where(api_keys.c.id == key_id))
    row = r.mappings().first()
    return to_record(ApiKeyRecord, row) if row is not None else None


async def list_keys(conn: AsyncConnection, environment_id: str | None = None) -> list[ApiKeyRecord]:
    q = select(api_keys).order_by(api_keys.c.created_at)
    if environment_id is not None:
        q = q.where(api_keys.c.environment_id == environment_id)
    r = await conn.execute(q)
    return [to_record(ApiKeyRecord, m) for m in r.mappings().all()]


async def revoke(conn: AsyncConnection, key_id: str, now: float) -> bool:
    r = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return r.rowcount > 0
