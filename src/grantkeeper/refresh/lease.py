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

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Double,
    Integer,
    LargeBinary,
    and_,
    bindparam,
    case,
    cast,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import GrantRecord
from grantkeeper.store.tables import grants

__all__ = [
    "claim",
    "claim_due",
    "claim_due_records",
    "db_now",
    "fail",
    "mark_invalid",
    "pg_array_type",
    "release",
    "release_claimed",
    "renew",
    "renew_many",
    "write_tokens",
    "write_tokens_many",
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
    conn: AsyncConnection,
    environment_id: str,
    grant_id: str,
    owner: str,
    seconds: float,
    version: int,
) -> bool:
    """Extend our lease to ``seconds`` from now; also re-take it if it expired and nobody
    else took it meanwhile, but only while the grant is still at ``version``, the generation
    whose refresh token we hold: another holder may have taken the expired lease, refreshed
    and let go (re-taking it then would present a spent refresh token). False: the grant
    left ``active``, moved past ``version``, or another owner holds it."""
    r = await conn.execute(
        update(grants)
        .where(
            *_row(environment_id, grant_id),
            grants.c.status == "active",
            grants.c.version == version,
            _free_or_ours(conn, owner),
        )
        .values(lease_owner=owner, lease_until=db_now(conn) + seconds)
    )
    return r.rowcount > 0


async def renew_many(
    conn: AsyncConnection, owner: str, seconds: float, rows: Sequence[tuple[str, int]]
) -> set[str]:
    """``renew`` for many grants at once: ``[(grant_id, version)]``, each fenced on its own
    generation, status and lease exactly as ``renew``; returns the ids renewed.
    PostgreSQL: one ``UPDATE ... FROM unnest(...)``; SQLite: one UPDATE per grant."""
    if not rows:
        return set()
    if conn.dialect.name != "postgresql":
        stmt = (
            update(grants)
            .where(
                grants.c.id == bindparam("r_id"),
                grants.c.status == "active",
                grants.c.version == bindparam("r_version"),
                _free_or_ours(conn, owner),
            )
            .values(lease_owner=owner, lease_until=db_now(conn) + seconds)
        )
        renewed: set[str] = set()
        for gid, version in rows:
            r = await conn.execute(stmt, {"r_id": gid, "r_version": version})
            if r.rowcount:
                renewed.add(gid)
        return renewed
    r = await conn.execute(
        text(_PG_RENEW_MANY),
        {
            "ids": [gid for gid, _ in rows],
            "versions": [v for _, v in rows],
            "owner": owner,
            "seconds": seconds,
        },
    )
    return {row[0] for row in r.all()}


_PG_RENEW_MANY = (
    "UPDATE grants AS g SET lease_owner = :owner, lease_until = "
    "CAST(extract(epoch FROM clock_timestamp()) AS float8) + CAST(:seconds AS float8) "
    "FROM unnest(CAST(:ids AS text[]), CAST(:versions AS int4[])) AS v(id, version) "
    "WHERE g.id = v.id AND g.version = v.version AND g.status = 'active' "
    "AND (g.lease_owner IS NULL OR g.lease_owner = :owner OR g.lease_until IS NULL "
    "OR g.lease_until < extract(epoch FROM clock_timestamp())) RETURNING g.id"
)


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
    if values.get("retry_at") is not None:
        # the next proactive attempt is the retry: a backed-off row must not sit at the
        # head of the due index (every claim would scan past it)
        values = {
            **values,
            "refresh_due_at": case(
                (grants.c.refresh_due_at.is_(None), None), else_=values["retry_at"]
            ),
        }
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


def _due(conn: AsyncConnection, now: float) -> ColumnElement[bool]:
    return and_(
        grants.c.status == "active",
        grants.c.refresh_due_at.is_not(None),
        grants.c.refresh_due_at <= now,
        or_(grants.c.retry_at.is_(None), grants.c.retry_at <= now),
        or_(grants.c.lease_until.is_(None), grants.c.lease_until < db_now(conn)),
    )


async def claim_due_records(
    conn: AsyncConnection, owner: str, now: float, seconds: float, limit: int
) -> list[GrantRecord]:
    """Lease up to ``limit`` due grants in one statement and return them whole.

    The claim also moves ``refresh_due_at`` to ``now + seconds``: a leased row leaves the
    head of the due index, and if this worker dies the grant falls due again about when
    its lease runs out. PostgreSQL: ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
    LOCKED LIMIT n) RETURNING``, so concurrent workers take disjoint sets without waiting;
    SQLite: the write lock taken at BEGIN serialises claimers.
    """
    due = _due(conn, now)
    sub = select(grants.c.id).where(due).order_by(grants.c.refresh_due_at).limit(limit)
    if conn.dialect.name == "postgresql":
        # a materialised CTE: a plain IN (subquery) may be run more than once by the
        # planner and then lease more than ``limit`` rows
        picked = sub.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        where = grants.c.id.in_(select(picked.c.id))
    else:
        where = grants.c.id.in_(sub.scalar_subquery())
    r = await conn.execute(
        update(grants)
        .where(where, due)
        .values(lease_owner=owner, lease_until=db_now(conn) + seconds, refresh_due_at=now + seconds)
        .returning(*grants.c)
    )
    recs = [to_record(GrantRecord, row) for row in r.mappings().all()]
    return recs


async def release_claimed(
    conn: AsyncConnection, ids: Sequence[str], owner: str, due_at: float
) -> int:
    """Give back claimed leases never used at a provider (only ours), due again at ``due_at``."""
    if not ids:
        return 0
    r = await conn.execute(
        update(grants)
        .where(grants.c.id.in_(list(ids)), grants.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, refresh_due_at=due_at)
    )
    return int(r.rowcount)


#: PostgreSQL array types for ``write_tokens_many``'s unnest, by SQLAlchemy column type
def pg_array_type(column: str) -> str:
    t = grants.c[column].type
    if isinstance(t, LargeBinary):
        return "bytea"
    if isinstance(t, Double):
        return "float8"
    if isinstance(t, Integer):
        return "int4"
    if isinstance(t, JSON):
        return "text"  # sent as JSON text, cast per row below
    return "text"


async def write_tokens_many(
    conn: AsyncConnection, owner: str, rows: Sequence[tuple[str, int, dict[str, Any]]]
) -> set[str]:
    """``write_tokens`` for many grants at once: ``[(grant_id, seen_version, values)]``.

    Each row keeps its own fence (``active``, still at its ``seen_version``, our lease or
    a free one) and its generation is bumped in SQL; returns the ids written. Every row
    must carry the same value columns. PostgreSQL: one ``UPDATE ... FROM unnest(...)``;
    SQLite: one fenced UPDATE per grant in the caller's transaction.
    """
    if not rows:
        return set()
    cols = sorted(rows[0][2])
    if any(sorted(v) != cols for _, _, v in rows):
        raise ValueError("write_tokens_many: every row must set the same columns")
    if conn.dialect.name != "postgresql":
        stmt = (
            update(grants)
            .where(
                grants.c.id == bindparam("w_id"),
                grants.c.version == bindparam("w_version"),
                grants.c.status == "active",
                _free_or_ours(conn, owner),
            )
            .values(
                {c: bindparam(f"w_{c}", type_=grants.c[c].type) for c in cols}
                | {"version": grants.c.version + 1, "lease_owner": None, "lease_until": None}
            )
        )
        written: set[str] = set()
        for gid, seen, values in rows:
            one = {"w_id": gid, "w_version": seen} | {f"w_{c}": values[c] for c in cols}
            r = await conn.execute(stmt, one)
            if r.rowcount:
                written.add(gid)
        return written
    params: dict[str, Any] = {
        "ids": [gid for gid, _, _ in rows],
        "versions": [seen for _, seen, _ in rows],
        "owner": owner,
    }
    sets, args = [], ["CAST(:ids AS text[])", "CAST(:versions AS int4[])"]
    names = ["id", "seen_version"]
    for i, c in enumerate(cols):
        is_json = isinstance(grants.c[c].type, JSON)
        params[f"c{i}"] = [json.dumps(v[c]) if is_json else v[c] for _, _, v in rows]
        args.append(f"CAST(:c{i} AS {pg_array_type(c)}[])")
        names.append(f"c{i}")
        sets.append(f"{c} = v.c{i}::json" if is_json else f"{c} = v.c{i}")
    # column names come from the table definition (grants.c[c] above), values are bound
    sql = (
        f"UPDATE grants AS g SET {', '.join(sets)}, version = g.version + 1, "  # noqa: S608
        "lease_owner = NULL, lease_until = NULL "
        f"FROM unnest({', '.join(args)}) AS v({', '.join(names)}) "
        "WHERE g.id = v.id AND g.version = v.seen_version AND g.status = 'active' "
        "AND (g.lease_owner IS NULL OR g.lease_owner = :owner OR g.lease_until IS NULL "
        "OR g.lease_until < extract(epoch FROM clock_timestamp())) RETURNING g.id"
    )
    r = await conn.execute(text(sql), params)
    return {row[0] for row in r.all()}
