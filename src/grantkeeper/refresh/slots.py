"""Per-provider concurrency across every worker process: slot leases in the database.

A provider host has ``count`` slots (rows of ``refresh_slots``). A worker makes a
proactive call to that host only under a slot it holds: an owner-checked lease in
database time, like the grant lease. However many workers run, at most ``count`` calls
are at one provider host at once. In-process state only records which of the slots this
process holds is busy; a slot is used for a call only while its lease has more than the
HTTP timeout left (measured from before the statement that took or renewed it was
sent), so a process that stalls past its lease never starts a call under it again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from grantkeeper.errors import RefreshBusy
from grantkeeper.refresh.lease import db_now
from grantkeeper.store.tables import refresh_slots
from grantkeeper.store.unavailable import DB_ERRORS

__all__ = ["Held", "ProviderSlots", "acquire", "release", "renew"]

log = logging.getLogger(__name__)


async def _ensure(conn: AsyncConnection, provider: str, count: int) -> None:
    rows = [{"provider": provider, "slot": i} for i in range(count)]
    ins = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(ins(refresh_slots).values(rows).on_conflict_do_nothing())


async def acquire(
    conn: AsyncConnection, provider: str, owner: str, want: int, count: int, seconds: float
) -> list[int]:
    """Take up to ``want`` free (or expired) slots of ``provider`` among its first ``count``."""
    if want <= 0:
        return []
    await _ensure(conn, provider, count)
    free = and_(
        refresh_slots.c.provider == provider,
        refresh_slots.c.slot < count,
        or_(
            refresh_slots.c.owner.is_(None),
            refresh_slots.c.lease_until.is_(None),
            refresh_slots.c.lease_until < db_now(conn),
        ),
    )
    sub = select(refresh_slots.c.slot).where(free).order_by(refresh_slots.c.slot).limit(want)
    if conn.dialect.name == "postgresql":
        # materialised: a plain IN (subquery) may be run more than once by the planner
        picked = sub.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        where = refresh_slots.c.slot.in_(select(picked.c.slot))
    else:
        where = refresh_slots.c.slot.in_(sub.scalar_subquery())
    r = await conn.execute(
        update(refresh_slots)
        .where(where, free)
        .values(owner=owner, lease_until=db_now(conn) + seconds)
        .returning(refresh_slots.c.slot)
    )
    return sorted(row[0] for row in r.all())


async def renew(
    conn: AsyncConnection, provider: str, owner: str, slots: Sequence[int], seconds: float
) -> list[int]:
    """Extend our leases on ``slots``; returns the ones still ours."""
    if not slots:
        return []
    r = await conn.execute(
        update(refresh_slots)
        .where(
            refresh_slots.c.provider == provider,
            refresh_slots.c.slot.in_(list(slots)),
            refresh_slots.c.owner == owner,
        )
        .values(lease_until=db_now(conn) + seconds)
        .returning(refresh_slots.c.slot)
    )
    return sorted(row[0] for row in r.all())


async def release(conn: AsyncConnection, provider: str, owner: str, slots: Sequence[int]) -> None:
    """Give slots back (only ours)."""
    if slots:
        await conn.execute(
            update(refresh_slots)
            .where(
                refresh_slots.c.provider == provider,
                refresh_slots.c.slot.in_(list(slots)),
                refresh_slots.c.owner == owner,
            )
            .values(owner=None, lease_until=None)
        )


class Held(NamedTuple):
    """A slot held for one call, and whether it was taken from the database while the caller waited
    (other processes may have held every slot meanwhile)."""

    number: int
    from_database: bool


def _time_out(fut: asyncio.Future[Held]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Provider:
    __slots__ = ("acquirer", "busy", "free", "held", "queue")

    def __init__(self) -> None:
        #: slot -> monotonic time until which it may start a call
        self.held: dict[int, float] = {}
        self.free: list[int] = []
        self.busy: set[int] = set()
        #: callers waiting for a slot, first come first served
        self.queue: collections.deque[asyncio.Future[Held]] = collections.deque()
        self.acquirer: asyncio.Task[None] | None = None


class ProviderSlots:
    """The slots one worker process holds, per provider host."""

    def __init__(
        self, engine: AsyncEngine, owner: str, *, count: int, seconds: float, call_budget: float
    ) -> None:
        self._engine = engine
        self._owner = owner
        self._count = count
        self._seconds = seconds
        #: a call starts under a slot only if its lease outlasts this many seconds
        self._budget = call_budget
        self._providers: dict[str, _Provider] = {}
        self._renewer: asyncio.Task[None] | None = None

    def _usable(self, p: _Provider, slot: int) -> bool:
        return p.held.get(slot, 0.0) - time.monotonic() > self._budget

    def _take(self, p: _Provider) -> int | None:
        while p.free:
            slot = p.free.pop()
            if self._usable(p, slot):
                return slot
            # too close to its lease's end: only a renewal makes it usable again
        return None

    def _offer(self, p: _Provider, slot: int, from_database: bool = False) -> None:
        """A slot became free: hand it to the first waiter, or keep it."""
        if self._usable(p, slot):
            while p.queue:
                fut = p.queue.popleft()
                if not fut.done():
                    p.busy.add(slot)
                    fut.set_result(Held(slot, from_database))
                    return
        p.free.append(slot)

    async def _acquire_loop(self, name: str, p: _Provider) -> None:
        # one acquirer per provider while anyone waits; polls while others hold every slot
        while p.queue:
            want = min(len(p.queue), self._count - len(p.held))
            got: list[int] = []
            if want > 0:
                sent = time.monotonic()
                try:
                    async with self._engine.begin() as conn:
                        got = await acquire(
                            conn, name, self._owner, want, self._count, self._seconds
                        )
                except DB_ERRORS as exc:
                    log.warning("refresh slots for %s: %s", name, type(exc).__name__)
                for slot in got:
                    p.held[slot] = sent + self._seconds
                    self._offer(p, slot, from_database=True)
                if got and (self._renewer is None or self._renewer.done()):
                    self._renewer = asyncio.ensure_future(self._renew_loop())
            if p.queue and not got:
                await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def slot(self, name: str, wait: float) -> AsyncIterator[Held]:
        """Hold one of ``name``'s slots for a call; ``RefreshBusy`` after ``wait`` seconds."""
        p = self._providers.setdefault(name, _Provider())
        number = self._take(p)
        if number is not None:
            p.busy.add(number)
            held = Held(number, False)
        else:
            fut: asyncio.Future[Held] = asyncio.get_running_loop().create_future()
            p.queue.append(fut)
            if p.acquirer is None or p.acquirer.done():
                p.acquirer = asyncio.ensure_future(self._acquire_loop(name, p))
            # one timer, no wrapper task per waiter (under load most calls wait a moment)
            timer = asyncio.get_running_loop().call_later(wait, _time_out, fut)
            try:
                held = await fut
            except (TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ValueError):
                    p.queue.remove(fut)
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    # handed a slot just as we gave up: pass it on
                    p.busy.discard(fut.result().number)
                    self._offer(p, fut.result().number)
                else:
                    fut.cancel()
                if not isinstance(sys.exc_info()[1], asyncio.CancelledError):
                    raise RefreshBusy(f"no refresh slot for {name} is free") from None
                raise
            finally:
                timer.cancel()
        try:
            yield held
        finally:
            p.busy.discard(held.number)
            if held.number in p.held:
                self._offer(p, held.number)

    async def _renew_loop(self) -> None:
        while any(p.held for p in self._providers.values()):
            await asyncio.sleep(self._seconds / 6)
            for name, p in list(self._providers.items()):
                # slots nobody waits for go back, so other workers can use them
                idle = [] if p.queue else list(p.free)
                keep = [s for s in p.held if s not in idle]
                sent = time.monotonic()
                try:
                    async with self._engine.begin() as conn:
                        await release(conn, name, self._owner, idle)
                        ours = await renew(conn, name, self._owner, keep, self._seconds)
                except DB_ERRORS as exc:
                    log.warning("refresh slots for %s: %s", name, type(exc).__name__)
                    continue
                for s in idle:
                    p.held.pop(s, None)
                p.free = [s for s in p.free if s not in idle]
                for s in keep:
                    if s in ours:
                        p.held[s] = sent + self._seconds
                    else:
                        # lost: never start a call under it again
                        p.held.pop(s, None)
                        with contextlib.suppress(ValueError):
                            p.free.remove(s)
                # renewed free slots may serve waiters again
                free, p.free = p.free, []
                for s in free:
                    self._offer(p, s)

    async def close(self) -> None:
        tasks = [t for t in (self._renewer, *(p.acquirer for p in self._providers.values())) if t]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for name, p in self._providers.items():
            if p.held:
                with contextlib.suppress(*DB_ERRORS):
                    async with self._engine.begin() as conn:
                        await release(conn, name, self._owner, list(p.held))
                p.held.clear()
                p.free.clear()
