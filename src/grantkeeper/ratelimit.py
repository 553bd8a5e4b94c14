"""Per-API-key rate limits: a token bucket per (key, endpoint class) in the database.

Buckets live in the ``rate_limits`` table, so every API process sharing the database
shares them. Each bucket holds up to ``GRANTKEEPER_RATE_LIMIT_BURST`` tokens and gains
``GRANTKEEPER_RATE_LIMIT_PER_SECOND`` per second; a request takes one, or is answered
429 ``rate_limited`` with ``Retry-After``. ``0`` (the default) turns limits off, and then
they cost nothing.

**The shared bucket** (:func:`reserve`): taking tokens is one atomic conditional
``UPDATE`` whose ``WHERE`` does the refill arithmetic, so two processes can never both
spend the last token (a row lock on PostgreSQL, the write lock on SQLite). A denial
writes nothing, so a client that keeps hammering still gets the configured rate, no
less. A missing bucket is created full with ``INSERT ... ON CONFLICT DO NOTHING``.

**No hot row** (:class:`Limiter`): spending one token per request from the shared row
would make every request of a busy key a write, and every process queue on that one
row lock. Instead each process *reserves* a few tokens with one ``UPDATE`` and spends
them itself, for at most :data:`HOLD` seconds; whatever it has not spent by then goes
back to the bucket with its next reservation. The batch adapts: it starts at one, grows
(doubling) while reservations are used up within the hold time, shrinks to what was used
when they were not, and never exceeds ``rate x HOLD`` nor half the burst, so a low limit
(under ``2 / HOLD`` per second, or a burst under 4) is exactly the per-request bucket. Correctness never
depends on this process's memory: a token is spent locally only after the shared bucket
gave it up, so all processes together never get more than ``burst + rate x time`` since
a bucket was created (any window of length ``t`` at most ``burst + rate x (t + HOLD)``),
and a process that dies loses only its unspent reservation (fewer tokens granted, never
more). After a denial the process answers 429 by itself until the bucket has refilled
enough for its next batch (``Retry-After`` still names when the first token is back),
so a client hammering past its limit costs the database nothing.

Endpoint classes: ``token`` (``POST /v1/grants/{id}/token``), ``proxy`` (``/v1/proxy/...``)
and ``connect`` (``POST /v1/connect/sessions``).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import ColumnElement, and_, case, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from grantkeeper.clock import Clock
from grantkeeper.errors import RateLimited
from grantkeeper.store.tables import rate_limits

if TYPE_CHECKING:
    from grantkeeper.runtime import Runtime

__all__ = ["HOLD", "EndpointClass", "Limiter", "enforce", "reserve", "take"]

EndpointClass = Literal["token", "proxy", "connect"]

#: seconds a process may keep reserved tokens before it gives the rest back; bounds how
#: far any window runs ahead of the rate (``rate x HOLD``) and the batch size
HOLD = 0.1
#: buckets one process keeps a share of before it forgets idle ones
_MAX_SHARES = 10_000
#: conditional UPDATEs one reservation tries when other processes keep taking first
_TRIES = 3

_t = rate_limits.c


def _available(now: float, rate: float, burst: float, give_back: int) -> ColumnElement[float]:
    """``min(burst, tokens + max(now - updated_at, 0) * rate + give_back)`` in portable SQL."""
    elapsed = case((_t.updated_at < now, literal(now) - _t.updated_at), else_=literal(0.0))
    grown = _t.tokens + elapsed * literal(rate) + literal(float(give_back))
    return case((grown > burst, literal(burst)), else_=grown)


async def reserve(
    conn: AsyncConnection,
    bucket: str,
    *,
    now: float,
    rate: float,
    burst: int,
    want: int = 1,
    give_back: int = 0,
) -> tuple[int, float]:
    """Take up to ``want`` whole tokens, after returning ``give_back`` unspent ones.

    Returns ``(taken, 0.0)`` with ``taken >= 1``, or ``(0, seconds until one is there)``.
    When ``want`` are there it is one conditional ``UPDATE``; when fewer are, it takes
    those; a denial writes nothing (``give_back > 0`` is never denied).
    """
    avail = _available(now, rate, float(burst), give_back)
    n = max(1, min(want, burst))
    for _ in range(_TRIES):
        spend = (
            update(rate_limits)
            .where(and_(_t.bucket == bucket, avail >= n))
            .values(
                tokens=avail - n,
                updated_at=case((_t.updated_at < now, literal(now)), else_=_t.updated_at),
            )
        )
        if (await conn.execute(spend)).rowcount == 1:
            return n, 0.0
        have = await conn.scalar(select(avail).where(_t.bucket == bucket))
        if have is None:
            ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(rate_limits)
            created = await conn.execute(
                ins.values(
                    bucket=bucket, tokens=float(burst - n), updated_at=now
                ).on_conflict_do_nothing(index_elements=["bucket"])
            )
            if created.rowcount == 1:
                return n, 0.0
            # a concurrent first request created the bucket meanwhile: spend from it
            continue
        if have < 1.0:
            return 0, _wait(float(have), 1, rate)
        n = min(n, int(have))  # fewer than asked for are there: take those
    # other processes kept taking first: refuse this one, they got the tokens
    have = await conn.scalar(select(avail).where(_t.bucket == bucket))
    return 0, _wait(float(have or 0.0), 1, rate)


def _wait(have: float, need: int, rate: float) -> float:
    """Seconds until a bucket holding ``have`` holds ``need``."""
    return max((need - have) / rate, 0.0) if rate > 0 else 1.0


async def take(
    conn: AsyncConnection, bucket: str, *, now: float, rate: float, burst: int
) -> float | None:
    """Take one token: None when allowed, else the seconds until one is available."""
    taken, wait = await reserve(conn, bucket, now=now, rate=rate, burst=burst)
    return None if taken else wait


@dataclass
class _Share:
    """This process's share of one bucket."""

    #: reserved and not spent yet, spendable from ``since`` until ``until``
    tokens: int = 0
    since: float = 0.0
    until: float = 0.0
    #: the size of the last reservation, and of the next one
    granted: int = 0
    batch: int = 1
    #: after a denial: 429 locally until then; ``first`` is when one token is back
    empty_until: float = 0.0
    first: float = 0.0
    #: a reservation in flight (the others wait for it) and how many wait
    inflight: asyncio.Future[None] | None = None
    waiting: int = 0


class Limiter:
    """One process's reserved tokens of the shared buckets (see the module docstring)."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        self._shares: dict[str, _Share] = {}
        #: reservations sent to the database (each one transaction)
        self.reservations = 0

    async def take(
        self, engine: AsyncEngine, clock: Clock, bucket: str, *, rate: float, burst: int
    ) -> float | None:
        """Spend one token: None when allowed, else the seconds until one is available."""
        if rate <= 0:
            raise ValueError("a rate limit needs a rate above zero")
        share = self._shares.get(bucket)
        if share is None:
            if len(self._shares) >= _MAX_SHARES:
                self._forget(clock.now())
            share = self._shares[bucket] = _Share()
        while True:
            now = clock.now()
            if share.tokens and share.since <= now < share.until:
                share.tokens -= 1
                return None
            if now < share.empty_until:
                return max(share.first - now, 0.0)
            if share.inflight is None:
                return await self._reserve(engine, bucket, share, now, rate, burst)
            # one reservation per bucket at a time: wait for it, then look again
            share.waiting += 1
            try:
                await asyncio.shield(share.inflight)
            finally:
                share.waiting -= 1

    async def _reserve(
        self,
        engine: AsyncEngine,
        bucket: str,
        share: _Share,
        now: float,
        rate: float,
        burst: int,
    ) -> float | None:
        # half the burst at most: one process never holds the whole bucket
        cap = max(1, min(int(rate * self.hold), burst // 2))
        give_back = share.tokens  # left over from an expired reservation
        if give_back:
            share.batch = share.granted - give_back  # what was used in a whole hold time
        elif share.granted and now < share.until:
            share.batch *= 2  # used up early: more next time
        want = min(cap, max(share.batch, share.waiting + 1, 1))
        share.batch = want
        share.tokens = share.granted = 0
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        share.inflight = done
        try:
            self.reservations += 1
            async with engine.begin() as conn:
                got, wait = await reserve(
                    conn, bucket, now=now, rate=rate, burst=burst, want=want, give_back=give_back
                )
        finally:
            # a failed or cancelled reservation loses at most what it gave back (fewer
            # tokens granted, never more); the waiters try again themselves
            share.inflight = None
            done.set_result(None)
        if not got:
            share.first = now + wait
            # refuse locally until the bucket holds a whole batch again (at most HOLD more),
            # not a single token: else a client hammering at its limit would make every
            # grant a write; the tokens are not lost, they wait in the bucket
            share.empty_until = share.first + (cap - 1) / rate
            share.batch = cap
            return wait
        share.tokens, share.granted = got - 1, got
        share.since, share.until = now, now + self.hold
        if got < want:
            # the bucket is empty now: once these are spent, refuse locally until it holds a
            # batch again (else every grant at the limit would be a reservation of one)
            share.first = now + 1.0 / rate
            share.empty_until = now + cap / rate
            share.batch = cap
        return None

    def _forget(self, now: float) -> None:
        """Drop the shares of idle buckets (their unspent tokens are lost: never too many)."""
        for bucket, share in list(self._shares.items()):
            if share.inflight is None and (share.until <= now or now < share.since):
                if share.empty_until <= now:
                    del self._shares[bucket]


async def enforce(rt: Runtime, key_id: str, endpoint: EndpointClass) -> None:
    """Raise ``RateLimited`` (429, Retry-After) when the key has used up its budget."""
    rate = rt.settings.rate_limit_per_second
    if rate <= 0:
        return
    wait = await rt.limiter.take(
        rt.engine, rt.clock, f"{endpoint}:{key_id}", rate=rate, burst=rt.settings.rate_limit_burst
    )
    if wait is not None:
        raise RateLimited(
            f"this API key exceeded {rate:g} requests per second on {endpoint} endpoints",
            retry_after=max(1, math.ceil(wait)),
        )
