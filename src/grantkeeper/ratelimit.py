"""Per-API-key rate limits: a token bucket per (key, endpoint class) in the database.

Buckets live in the ``rate_limits`` table, so every API process sharing the database
shares them. Each bucket holds up to ``GRANTKEEPER_RATE_LIMIT_BURST`` tokens and gains
``GRANTKEEPER_RATE_LIMIT_PER_SECOND`` per second; a request takes one, or is answered
429 ``rate_limited`` with ``Retry-After``. ``0`` (the default) turns limits off, and then
they cost nothing.

Taking a token is one atomic conditional ``UPDATE`` whose ``WHERE`` does the refill
arithmetic, so two processes can never both spend the last token (a row lock on
PostgreSQL, the write lock on SQLite). A denied request does not write at all, so a
client that keeps hammering still gets the configured rate, no less. A missing bucket
is created full with ``INSERT ... ON CONFLICT DO NOTHING``.

Endpoint classes: ``token`` (``POST /v1/grants/{id}/token``), ``proxy`` (``/v1/proxy/...``)
and ``connect`` (``POST /v1/connect/sessions``).
"""

from __future__ import annotations

import math
from typing import Literal

from sqlalchemy import ColumnElement, and_, case, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.errors import RateLimited
from grantkeeper.runtime import Runtime
from grantkeeper.store.tables import rate_limits

__all__ = ["EndpointClass", "enforce", "take"]

EndpointClass = Literal["token", "proxy", "connect"]

_t = rate_limits.c


def _refilled(now: float, rate: float, burst: float) -> ColumnElement[float]:
    """``min(burst, tokens + max(now - updated_at, 0) * rate)`` in portable SQL."""
    elapsed = case((_t.updated_at < now, literal(now) - _t.updated_at), else_=literal(0.0))
    grown = _t.tokens + elapsed * literal(rate)
    return case((grown > burst, literal(burst)), else_=grown)


async def take(
    conn: AsyncConnection, bucket: str, *, now: float, rate: float, burst: int
) -> float | None:
    """Take one token: None when allowed, else the seconds until one is available."""
    refilled = _refilled(now, rate, float(burst))
    spend = (
        update(rate_limits)
        .where(and_(_t.bucket == bucket, refilled >= 1.0))
        .values(
            tokens=refilled - 1.0,
            updated_at=case((_t.updated_at < now, literal(now)), else_=_t.updated_at),
        )
    )
    if (await conn.execute(spend)).rowcount == 1:
        return None
    ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(rate_limits)
    created = await conn.execute(
        ins.values(bucket=bucket, tokens=float(burst) - 1.0, updated_at=now).on_conflict_do_nothing(
            index_elements=["bucket"]
        )
    )
    if created.rowcount == 1:
        return None
    # a concurrent first request created the bucket meanwhile: spend from it, do not refuse
    if (await conn.execute(spend)).rowcount == 1:
        return None
    have = await conn.scalar(select(refilled).where(_t.bucket == bucket))
    missing = 1.0 - float(have if have is not None else 0.0)
    return max(missing / rate, 0.0) if rate > 0 else 1.0


async def enforce(rt: Runtime, key_id: str, endpoint: EndpointClass) -> None:
    """Raise ``RateLimited`` (429, Retry-After) when the key has used up its budget."""
    rate = rt.settings.rate_limit_per_second
    if rate <= 0:
        return
    async with rt.engine.begin() as conn:
        wait = await take(
            conn,
            f"{endpoint}:{key_id}",
            now=rt.clock.now(),
            rate=rate,
            burst=rt.settings.rate_limit_burst,
        )
    if wait is not None:
        raise RateLimited(
            f"this API key exceeded {rate:g} requests per second on {endpoint} endpoints",
            retry_after=max(1, math.ceil(wait)),
        )
