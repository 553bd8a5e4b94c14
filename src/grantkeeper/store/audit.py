"""Audit events: append-only; the hash chain is filled by ``auditchain.seal``.

Appending never touches the chain, so the hot path (every token handed out is
audited) never serialises on it; the sealer links events afterwards, in the order
it seals them (``chain_seq``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import audit_checkpoints, audit_events

__all__ = [
    "append",
    "append_many",
    "chain_after",
    "chain_head",
    "count_unchained",
    "delete_chain",
    "delete_chain_outside",
    "event_with_hash",
    "first_before",
    "get_checkpoint",
    "put_checkpoint",
    "list_events",
    "month_heads",
    "lock_all_chains",
    "lock_sealer",
    "last_detail",
    "set_links",
    "unsealed",
    "unsealed_environments",
]

#: one-key advisory lock ("gk-audit" in ASCII): every sealer and pruner holds it shared,
#: work on all chains at once holds it exclusively
_ALL_CHAINS_LOCK = 0x676B2D6175646974
#: first half of the sealer's two-key pg_advisory_xact_lock ("gkac" in ASCII); the second
#: half names the environment (a separate key space from the one-key locks)
_SEALER_LOCK = 0x676B6163

#: detail keys that would mean a secret is being written to the audit log (a programming
#: error); the audit trail correlates tokens by grant generation, never by value
_FORBIDDEN_DETAIL_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "client_secret",
        "authorization_code",
        "code_verifier",
        "api_key",
        "password",
    }
)


async def append(
    conn: AsyncConnection,
    *,
    environment_id: str,
    actor: str,
    action: str,
    now: float,
    grant_id: str | None = None,
    integration_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    if detail and not _FORBIDDEN_DETAIL_KEYS.isdisjoint(detail):
        raise ValueError(
            f"audit detail must not carry secrets: {sorted(_FORBIDDEN_DETAIL_KEYS & set(detail))}"
        )
    await conn.execute(
        insert(audit_events).values(
            environment_id=environment_id,
            at=now,
            actor=actor,
            action=action,
            grant_id=grant_id,
            integration_id=integration_id,
            detail=detail or {},
        )
    )


async def append_many(conn: AsyncConnection, events: Sequence[dict[str, Any]]) -> None:
    """``append`` for many events in one executemany (keys as ``append``'s arguments)."""
    if not events:
        return
    rows = []
    for e in events:
        detail = e.get("detail") or {}
        if not _FORBIDDEN_DETAIL_KEYS.isdisjoint(detail):
            raise ValueError("audit detail must not carry secrets")
        rows.append(
            {
                "environment_id": e["environment_id"],
                "at": e["now"],
                "actor": e["actor"],
                "action": e["action"],
                "grant_id": e.get("grant_id"),
                "integration_id": e.get("integration_id"),
                "detail": detail,
            }
        )
    await conn.execute(insert(audit_events), rows)


async def list_events(
    conn: AsyncConnection,
    environment_id: str,
    *,
    grant_id: str | None = None,
    integration_ids: frozenset[str] | None = None,
    limit: int = 50,
    offset: int = 0,
    after_id: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    q = select(audit_events).where(audit_events.c.environment_id == environment_id)
    if grant_id is not None:
        q = q.where(audit_events.c.grant_id == grant_id)
    if integration_ids is not None:
        # a key limited to some integrations sees only their events
        q = q.where(audit_events.c.integration_id.in_(sorted(integration_ids)))
    if after_id is not None:
        q = q.where(audit_events.c.id > after_id).order_by(audit_events.c.id)
    else:
        q = q.order_by(audit_events.c.id.desc())
    q = q.limit(limit + 1).offset(offset)
    rows = [dict(m) for m in (await conn.execute(q)).mappings().all()]
    return rows[:limit], len(rows) > limit


async def last_detail(
    conn: AsyncConnection, environment_id: str, grant_id: str, action: str
) -> dict[str, Any] | None:
    """The detail of the newest ``action`` event of one grant (None when there is none)."""
    q = (
        select(audit_events.c.detail)
        .where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.grant_id == grant_id,
            audit_events.c.action == action,
        )
        .order_by(audit_events.c.id.desc())
        .limit(1)
    )
    detail = (await conn.execute(q)).scalar_one_or_none()
    return dict(detail) if detail is not None else None


# ---------------------------------------------------------------- the chain


def _env_lock_key(environment_id: str) -> int:
    """A stable signed 32-bit number for the environment (the same in every process; two
    environments that share one only take turns)."""
    return int.from_bytes(hashlib.sha256(environment_id.encode()).digest()[:4], "big", signed=True)


async def lock_sealer(conn: AsyncConnection, environment_id: str, *, wait: bool = False) -> bool:
    """One sealer (or pruner) per environment's chain at a time; other environments seal in
    parallel.

    PostgreSQL: a transaction-scoped advisory lock on (sealer, environment), tried, not
    waited for (another sealer is linking that chain: skip it), unless ``wait``; plus the
    all-chains lock held shared (see :func:`lock_all_chains`). SQLite: the sealing
    transaction's ``BEGIN IMMEDIATE`` already excludes every other writer.
    """
    if conn.dialect.name != "postgresql":
        return True
    keys = {"g": _ALL_CHAINS_LOCK, "k1": _SEALER_LOCK, "k2": _env_lock_key(environment_id)}
    if wait:
        # shared first, then the chain's own: the order every waiter takes them in
        await conn.execute(text("SELECT pg_advisory_xact_lock_shared(:g)"), keys)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k1, :k2)"), keys)
        return True
    got = await conn.scalar(
        text("SELECT pg_try_advisory_xact_lock_shared(:g) AND pg_try_advisory_xact_lock(:k1, :k2)"),
        keys,
    )
    return bool(got)


async def lock_all_chains(conn: AsyncConnection) -> None:
    """Every environment's chain at once, waiting for the sealers and pruners in progress
    (which hold this lock shared): for what spans environments, such as dropping a month's
    partition or creating partitions. SQLite: ``BEGIN IMMEDIATE`` already does."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:g)"), {"g": _ALL_CHAINS_LOCK})


async def unsealed_environments(
    conn: AsyncConnection, limit: int, *, before: float
) -> list[tuple[str, int]]:
    """(environment, lowest unsealed id) among the first ``limit`` unsealed events written
    before ``before`` (partial index), the environment with the oldest event first."""
    first = (
        select(audit_events.c.environment_id, audit_events.c.id)
        .where(audit_events.c.hash.is_(None), audit_events.c.at < before)
        .order_by(audit_events.c.id)
        .limit(limit)
        .subquery()
    )
    low = func.min(first.c.id)
    q = select(first.c.environment_id, low).group_by(first.c.environment_id).order_by(low)
    return [(str(e), int(i)) for e, i in (await conn.execute(q)).all()]


async def unsealed(
    conn: AsyncConnection,
    limit: int,
    *,
    before: float,
    environment_id: str | None = None,
    from_id: int = 0,
) -> list[dict[str, Any]]:
    """Events not sealed yet, written before ``before``, lowest id first; of one environment
    from id ``from_id`` on (its first unsealed id: the range scan starts there)."""
    q = select(audit_events).where(audit_events.c.hash.is_(None), audit_events.c.at < before)
    if environment_id is not None:
        q = q.where(audit_events.c.environment_id == environment_id, audit_events.c.id >= from_id)
    q = q.order_by(audit_events.c.id).limit(limit)
    return [dict(m) for m in (await conn.execute(q)).mappings().all()]


async def chain_head(conn: AsyncConnection, environment_id: str) -> tuple[int, str] | None:
    """(chain position, hash) of the environment's last sealed event; when the retention
    purge pruned every sealed event, its checkpoint's (the chain goes on from there)."""
    row = (
        await conn.execute(
            select(audit_events.c.chain_seq, audit_events.c.hash)
            .where(
                audit_events.c.environment_id == environment_id,
                audit_events.c.chain_seq.is_not(None),
            )
            .order_by(audit_events.c.chain_seq.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        row = (
            await conn.execute(
                select(audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash).where(
                    audit_checkpoints.c.environment_id == environment_id
                )
            )
        ).first()
    return (int(row[0]), str(row[1])) if row is not None else None


async def chain_after(
    conn: AsyncConnection, environment_id: str, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    """The environment's chained events after position ``after_seq``, in chain order."""
    q = (
        select(audit_events)
        .where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.chain_seq > after_seq,
        )
        .order_by(audit_events.c.chain_seq)
        .limit(limit)
    )
    return [dict(m) for m in (await conn.execute(q)).mappings().all()]


async def count_unchained(conn: AsyncConnection, environment_id: str) -> int:
    """Events of the environment that have no chain position yet (pending)."""
    got = await conn.scalar(
        select(func.count())
        .select_from(audit_events)
        .where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.chain_seq.is_(None),
        )
    )
    return int(got or 0)


async def event_with_hash(conn: AsyncConnection, environment_id: str, h: str) -> int | None:
    """Which event carries seal ``h`` (only asked after a broken link: a full scan is fine)."""
    got = await conn.scalar(
        select(audit_events.c.id)
        .where(audit_events.c.environment_id == environment_id, audit_events.c.hash == h)
        .limit(1)
    )
    return int(got) if got is not None else None


#: PostgreSQL: a whole batch of seals in one statement (one plan, one round trip; with
#: ``at`` each row is looked up in its own month only)
_SET_LINKS_PG = text(
    "UPDATE audit_events AS a SET prev_hash = u.p, hash = u.h, chain_seq = u.q "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:ats AS float8[]), CAST(:ps AS text[]), "
    "CAST(:hs AS text[]), CAST(:qs AS bigint[])) AS u(id, at, p, h, q) "
    "WHERE a.id = u.id AND a.at = u.at AND a.hash IS NULL"
)


async def set_links(
    conn: AsyncConnection, links: Sequence[tuple[int, str, str, int, float]]
) -> None:
    """Store (id, prev_hash, hash, chain_seq) of events written at ``at`` (the partition
    key on PostgreSQL); only on events not sealed yet (never re-seals)."""
    if not links:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(
            _SET_LINKS_PG,
            {
                "ids": [i for i, _p, _h, _q, _at in links],
                "ats": [at for _i, _p, _h, _q, at in links],
                "ps": [p for _i, p, _h, _q, _at in links],
                "hs": [h for _i, _p, h, _q, _at in links],
                "qs": [q for _i, _p, _h, q, _at in links],
            },
        )
        return
    stmt = (
        update(audit_events)
        .where(
            audit_events.c.id == bindparam("b_id"),
            audit_events.c.at == bindparam("b_at"),
            audit_events.c.hash.is_(None),
        )
        .values(
            prev_hash=bindparam("b_prev"), hash=bindparam("b_hash"), chain_seq=bindparam("b_seq")
        )
    )
    await conn.execute(
        stmt,
        [{"b_id": i, "b_prev": p, "b_hash": h, "b_seq": q, "b_at": at} for i, p, h, q, at in links],
    )


# ---------------------------------------------------------------- retention (pruning)


async def get_checkpoint(conn: AsyncConnection, environment_id: str) -> dict[str, Any] | None:
    """The environment's checkpoint (where its chain starts after pruning), if any."""
    row = (
        (
            await conn.execute(
                select(audit_checkpoints).where(
                    audit_checkpoints.c.environment_id == environment_id
                )
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


async def put_checkpoint(conn: AsyncConnection, values: dict[str, Any]) -> None:
    """Insert or replace the environment's checkpoint (the caller holds the sealer lock)."""
    env = values["environment_id"]
    r = await conn.execute(
        update(audit_checkpoints)
        .where(audit_checkpoints.c.environment_id == env)
        .values({k: v for k, v in values.items() if k != "environment_id"})
    )
    if not r.rowcount:
        await conn.execute(insert(audit_checkpoints).values(**values))


async def delete_chain(
    conn: AsyncConnection, environment_id: str, after_seq: int, through_seq: int
) -> int:
    """Delete the environment's chained events at positions ``(after_seq, through_seq]``
    (a range of the ``(environment_id, chain_seq)`` index); how many were deleted."""
    r = await conn.execute(
        delete(audit_events).where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.chain_seq > after_seq,
            audit_events.c.chain_seq <= through_seq,
        )
    )
    return int(r.rowcount or 0)


async def first_before(conn: AsyncConnection, environment_id: str, seq: int) -> int | None:
    """The id of an event whose chain position is at or before ``seq`` (None: there is none)."""
    got = await conn.scalar(
        select(audit_events.c.id)
        .where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.chain_seq <= seq,
        )
        .order_by(audit_events.c.chain_seq)
        .limit(1)
    )
    return int(got) if got is not None else None


async def month_heads(
    conn: AsyncConnection, partition: str
) -> list[tuple[str, int | None, int, int]]:
    """Per environment in one monthly partition: (environment id, last chain position,
    events, events not sealed yet). ``partition`` is a name ``auditparts`` made."""
    rows = await conn.execute(
        text(
            "SELECT environment_id, max(chain_seq), count(*), "  # noqa: S608 - a partition name
            f"count(*) FILTER (WHERE hash IS NULL) FROM {partition} GROUP BY environment_id"
        )
    )
    return [(str(e), int(t) if t is not None else None, int(n), int(u)) for e, t, n, u in rows]


async def delete_chain_outside(
    conn: AsyncConnection,
    environment_id: str,
    after_seq: int,
    through_seq: int,
    start: float,
    end: float,
) -> int:
    """``delete_chain`` for the events outside ``[start, end)`` only (the month being
    dropped is pruned away from the scan)."""
    r = await conn.execute(
        delete(audit_events).where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.chain_seq > after_seq,
            audit_events.c.chain_seq <= through_seq,
            or_(audit_events.c.at < start, audit_events.c.at >= end),
        )
    )
    return int(r.rowcount or 0)
