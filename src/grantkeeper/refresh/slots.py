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
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from grantkeeper.errors import RefreshBusy
from grantkeeper.refresh.lease import db_now
from grantkeeper.store.tables import refresh_slots
from grantkeeper.store.unavailable import DB_ERRORS

__all__ = ["ProviderSlots", "acquire", "release", "renew"]

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


class _Provider:
    __slots__ = ("busy", "held", "last_try", "waiters")

    def __init__(self) -> None:
        #: slot -> monotonic time until which it may start a call
        self.held: dict[int, float] = {}
        self.busy: set[int] = set()
        self.waiters = 0
        self.last_try = 0.0


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
        self._changed = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    def _usable(self, p: _Provider) -> int | None:
        now = time.monotonic()
        for slot, until in p.held.items():
            if slot not in p.busy and until - now > self._budget:
                return slot
        return None

    async def _acquire(self, name: str, p: _Provider) -> None:
        want = min(p.waiters - (len(p.held) - len(p.busy)), self._count - len(p.held))
        if want <= 0:
            return
        p.last_try = time.monotonic()
        sent = time.monotonic()
        try:
            async with self._engine.begin() as conn:
                got = await acquire(conn, name, self._owner, want, self._count, self._seconds)
        except DB_ERRORS as exc:
            log.warning("refresh slots for %s: %s", name, type(exc).__name__)
            return
        for slot in got:
            p.held[slot] = sent + self._seconds
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_loop())

    @contextlib.asynccontextmanager
    async def slot(self, name: str, wait: float) -> AsyncIterator[int]:
        """Hold one of ``name``'s slots for a call; ``RefreshBusy`` after ``wait`` seconds."""
        p = self._providers.setdefault(name, _Provider())
        deadline = time.monotonic() + wait
        p.waiters += 1
        try:
            while True:
                slot = self._usable(p)
                if slot is not None:
                    break
                if time.monotonic() - p.last_try > 0.05:
                    await self._acquire(name, p)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RefreshBusy(f"no refresh slot for {name} is free")
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.05))
        finally:
            p.waiters -= 1
        p.busy.add(slot)
        try:
            yield slot
        finally:
            p.busy.discard(slot)
            self._changed.set()

    async def _renew_loop(self) -> None:
        while any(p.held for p in self._providers.values()):
            await asyncio.sleep(self._seconds / 6)
            for name, p in list(self._providers.items()):
                idle = [s for s in p.held if s not in p.busy] if not p.waiters else []
                keep = [s for s in p.held if s not in idle]
                sent = time.monotonic()
                try:
                    async with self._engine.begin() as conn:
                        # slots nobody waits for go back, so other workers can use them
                        await release(conn, name, self._owner, idle)
                        ours = await renew(conn, name, self._owner, keep, self._seconds)
                except DB_ERRORS as exc:
                    log.warning("refresh slots for %s: %s", name, type(exc).__name__)
                    continue
                for s in idle:
                    p.held.pop(s, None)
                for s in keep:
                    if s in ours:
                        p.held[s] = sent + self._seconds
                    else:
                        p.held.pop(s, None)  # lost: never start a call under it again

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
        for name, p in self._providers.items():
            if p.held:
                with contextlib.suppress(*DB_ERRORS):
                    async with self._engine.begin() as conn:
                        await release(conn, name, self._owner, list(p.held))
                p.held.clear()
