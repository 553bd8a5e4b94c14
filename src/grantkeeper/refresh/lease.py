"""The refresh lease: the store primitive that makes a refresh single-flight across processes.

A lease is ``(lease_owner, lease_until)`` on the grant row. Rules:

* every write that touches a lease, or that a lease guards, names its owner in the
  ``WHERE`` clause: nobody ever clears or overwrites another process's lease;
* lease arithmetic uses the database's clock (``db_now``), never an application clock:
  processes on different machines agree on when a lease expired;
* token writes are fenced on the generation seen (``version``), on ``status =
  'active'`` and on the lease (ours, or free/expired: then nobody else is at the
  provider with this refresh token); the generation and the lease are bumped and
  cleared in SQL, never computed from an earlier read.

The functions take the caller's connection and never commit (the caller owns the
transaction). They return whether the row matched.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Double, and_, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from grantkeeper.store.tables import grants

__all__ = [
    "claim",
    "claim_due",
    "db_now",
    "fail",
    "mark_invalid",
    "release",
    "renew",
    "write_tokens",
]


def db_now(conn: AsyncConnection) -> ColumnElement[float]:
    """The database's current time in epoch seconds, as an SQL expression."""
    if conn.dialect.name == "postgresql":
        # clock_timestamp(), not now(): the transaction's start may be long ago
        return cast(func.extract("epoch", func.clock_timestamp()), Double)
    return cast((func.julianday("now") - 2440587.5) * 86400.0, Double)


def _free_or_ours(conn: AsyncConnection, owner: str) -> ColumnElement[bool]:
    return or_(
        grants.c.lease_owner.is_(None),
        grants.c.lease_owner == owner,
        grants.c.lease_until.is_(None),
        grants.c.lease_until < db_now(conn),
    )


def _row(environment_id: str, grant_id: str) -> list[ColumnElement[bool]]:
    return [grants.c.environment_id == environment_id, grants.c.id == grant_id]


async def claim(
    conn: AsyncConnection, environment_id: str, grant_id: str, owner: str, seconds: float
) -> bool:
    """Take the lease for ``seconds`` if it is free, expired or already ours (active grants only)."""
    r = await conn.execute(
        update(grants)
        .where(
            *_row(environment_id, grant_id), grants.c.status == "active", _free_or_ours(conn, owner)
        )
        .values(lease_owner=owner, lease_until=db_now(conn) + seconds)
    )
    return r.rowcount > 0


async def renew(
    conn: AsyncConnection, environment_id: str, grant_id: str, owner: str, seconds: float
) -> bool:
    """Extend our lease to ``seconds`` from now; also re-take it if it expired and nobody
    else took it meanwhile. False: the grant left ``active`` or another owner holds it."""
    return await claim(conn, environment_id, grant_id, owner, seconds)


async def release(conn: AsyncConnection, environment_id: str, grant_id: str, owner: str) -> bool:
    """Give the lease up, only if it is ours."""
    r = await conn.execute(
        update(grants)
        .where(*_row(environment_id, grant_id), grants.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )
    return r.rowcount > 0


async def write_tokens(
    conn: AsyncConnection,
    environment_id: str,
    grant_id: str,
    owner: str,
    seen_version: int,
    values: dict[str, Any],
) -> bool:
    """Store the next token generation (``seen_version + 1``) and drop our lease.

    Only into an ``active`` grant still at ``seen_version`` whose lease is ours or free.
    """
    r = await conn.execute(
        update(grants)
        .where(
            *_row(environment_id, grant_id),
            grants.c.version == seen_version,
            grants.c.status == "active",
            _free_or_ours(conn, owner),
        )
        .values(**values, version=grants.c.version + 1, lease_owner=None, lease_until=None)
    )
    return r.rowcount > 0


async def fail(
    conn: AsyncConnection,
    environment_id: str,
    grant_id: str,
    owner: str,
    values: dict[str, Any],
    *,
    keep_lease: bool,
) -> bool:
    """Record a failed attempt (backoff columns) while holding the lease.

    ``keep_lease``: the outcome at the provider is unknown, so the lease stays until
    it expires (nobody presents the same refresh token meanwhile).
    """
    if not keep_lease:
        values = {**values, "lease_owner": None, "lease_until": None}
    r = await conn.execute(
        update(grants)
        .where(*_row(environment_id, grant_id), grants.c.lease_owner == owner)
        .values(**values)
    )
    return r.rowcount > 0


async def mark_invalid(
    conn: AsyncConnection,
    environment_id: str,
    grant_id: str,
    owner: str,
    seen_version: int,
    values: dict[str, Any],
) -> bool:
    """``active`` -> ``invalid`` if nobody stored a newer generation and the lease is ours or free.

    The generation stays: the stored ciphertexts are bound to it (AAD), and DELETE still
    opens the refresh token to revoke it at the provider. Status is part of every token
    write's fence, so nothing is written into an invalid grant.
    """
    r = await conn.execute(
        update(grants)
        .where(
            *_row(environment_id, grant_id),
            grants.c.version == seen_version,
            grants.c.status == "active",
            _free_or_ours(conn, owner),
        )
        .values(**values, status="invalid", lease_owner=None, lease_until=None)
    )
    return r.rowcount > 0


async def claim_due(
    conn: AsyncConnection, owner: str, now: float, seconds: float, limit: int
) -> list[tuple[str, str, int, str]]:
    """Lease up to ``limit`` grants due for proactive refresh: [(environment_id, id, version, provider)].

    ``now`` (application time) is compared with the due and retry times the application
    wrote; leases use the database's clock. PostgreSQL: ``FOR UPDATE SKIP LOCKED`` so
    concurrent workers take disjoint sets; SQLite: the write lock taken at BEGIN
    serialises claimers.
    """
    due = and_(
        grants.c.status == "active",
        grants.c.refresh_due_at.is_not(None),
        grants.c.refresh_due_at <= now,
        or_(grants.c.retry_at.is_(None), grants.c.retry_at <= now),
        or_(grants.c.lease_until.is_(None), grants.c.lease_until < db_now(conn)),
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
        .values(lease_owner=owner, lease_until=db_now(conn) + seconds)
        .returning(grants.c.environment_id, grants.c.id, grants.c.version, grants.c.provider)
    )
    return [(a, b, c, d) for a, b, c, d in r.all()]
