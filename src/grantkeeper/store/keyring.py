"""Keyring rows: key-encryption keys stored wrapped under a root key (never in clear)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import environments, keyring_keys

__all__ = [
    "KeyringRow",
    "add_wraps",
    "environment_roots",
    "insert_row",
    "list_rows",
    "lock",
    "retire",
    "set_environment_root",
    "set_wrapped",
]

_LOCK = 746_532_017


@dataclass(frozen=True, repr=False)
class KeyringRow:
    id: str
    environment_id: str | None
    purpose: str
    root_key_id: str
    wrapped: bytes
    created_at: float
    activate_at: float
    retired_at: float | None
    wraps: int

    def __repr__(self) -> str:
        return f"KeyringRow({self.id!r}, env={self.environment_id!r}, root={self.root_key_id!r})"


async def lock(conn: AsyncConnection) -> None:
    """Serialise keyring changes across processes (PostgreSQL; SQLite's BEGIN IMMEDIATE does it)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})


async def list_rows(conn: AsyncConnection) -> list[KeyringRow]:
    r = await conn.execute(
        select(keyring_keys).order_by(keyring_keys.c.activate_at, keyring_keys.c.id)
    )
    return [
        KeyringRow(
            id=m["id"],
            environment_id=m["environment_id"],
            purpose=m["purpose"],
            root_key_id=m["root_key_id"],
            wrapped=bytes(m["wrapped"]),
            created_at=m["created_at"],
            activate_at=m["activate_at"],
            retired_at=m["retired_at"],
            wraps=int(m["wraps"]),
        )
        for m in r.mappings().all()
    ]


async def insert_row(conn: AsyncConnection, row: KeyringRow) -> None:
    await conn.execute(
        insert(keyring_keys).values(
            id=row.id,
            environment_id=row.environment_id,
            purpose=row.purpose,
            root_key_id=row.root_key_id,
            wrapped=row.wrapped,
            created_at=row.created_at,
            activate_at=row.activate_at,
            retired_at=row.retired_at,
            wraps=row.wraps,
        )
    )


async def set_wrapped(conn: AsyncConnection, key_id: str, root_key_id: str, wrapped: bytes) -> None:
    await conn.execute(
        update(keyring_keys)
        .where(keyring_keys.c.id == key_id)
        .values(root_key_id=root_key_id, wrapped=wrapped)
    )


async def retire(conn: AsyncConnection, key_ids: list[str], now: float) -> None:
    if key_ids:
        await conn.execute(
            update(keyring_keys)
            .where(keyring_keys.c.id.in_(key_ids), keyring_keys.c.retired_at.is_(None))
            .values(retired_at=now)
        )


async def add_wraps(conn: AsyncConnection, counts: Mapping[str, int]) -> dict[str, int]:
    """Add this process's wrap counts (in SQL, so processes never lose each other's); totals back."""
    for key_id, n in counts.items():
        if n:
            await conn.execute(
                update(keyring_keys)
                .where(keyring_keys.c.id == key_id)
                .values(wraps=keyring_keys.c.wraps + n)
            )
    r = await conn.execute(select(keyring_keys.c.id, keyring_keys.c.wraps))
    return {k: int(v) for k, v in r.all()}


async def environment_roots(conn: AsyncConnection) -> dict[str, str]:
    """Environment id -> its own root key id (environments on the default root are absent)."""
    r = await conn.execute(
        select(environments.c.id, environments.c.root_key_id).where(
            environments.c.root_key_id.is_not(None)
        )
    )
    return {a: b for a, b in r.all()}


async def set_environment_root(
    conn: AsyncConnection, environment_id: str, root_key_id: str
) -> None:
    await conn.execute(
        update(environments)
        .where(environments.c.id == environment_id)
        .values(root_key_id=root_key_id)
    )
