"""A handful of dedicated asyncpg connections behind a free list (the token read's, PostgreSQL).

Why not ``asyncpg.Pool``: on two cores its acquire/release bookkeeping (a queue, a holder
object, a context manager, a timeout wrapper) cost the token read tens of microseconds per
request and made its p99 tail (PERF-NOTES: p99 72 -> 23 ms with dedicated connections).
Only single autocommit statements run on these connections, so nothing needs resetting.

What a pool must still get right, and this does:

* **cancellation**: a waiter handed a connection and cancelled before it resumes gives it
  back (it is never lost), and a cancelled waiter is never handed one; a statement
  interrupted half way leaves its connection in an unknown state, so that one is dropped;
* **lost connections**: a connection found closed (the server restarted, an operator ran
  ``pg_terminate_backend``) is dropped and its slot opens a new one on demand; ``run``
  retries a read once on a fresh connection;
* **timeouts**: no connection within ``timeout`` -> ``StoreUnavailable`` (503);
* **shutdown**: ``close`` fails every waiter, waits briefly for busy connections to come
  back and closes them all with a proper goodbye.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from grantkeeper.errors import StoreUnavailable

__all__ = ["PgConns"]

T = TypeVar("T")
Connect = Callable[[], Awaitable[asyncpg.Connection]]

#: "this connection is gone" (whether the statement ran is unknown)
_LOST = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    # the backend's FATAL message arrived between statements: the protocol state is broken
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


def _unavailable(why: str = "the database is unavailable; retry shortly") -> StoreUnavailable:
    return StoreUnavailable(why)


class PgConns:
    """``size`` connections at most, opened on demand, handed out most recently used first."""

    def __init__(self, connect: Connect, size: int, timeout: float) -> None:
        self._connect = connect
        self._size = size
        self._timeout = timeout
        self._free: list[asyncpg.Connection] = []
        self._all: set[asyncpg.Connection] = set()
        #: slots taken: free + handed out + being opened
        self._slots = 0
        #: (deadline, future) in arrival order; a waiter's future gets a connection, or None
        #: meaning "a slot is yours: open one", or StoreUnavailable at its deadline
        self._waiters: collections.deque[
            tuple[float, asyncio.Future[asyncpg.Connection | None]]
        ] = collections.deque()
        #: one timer for the oldest waiter's deadline (not one timeout per waiter: under load
        #: most requests wait a moment, and a timer each cost more than the wait)
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._drained: asyncio.Event | None = None

    async def acquire(self) -> asyncpg.Connection:
        while self._free:
            conn = self._free.pop()
            if not conn.is_closed():
                return conn
            self._drop(conn)  # lost while idle
        if self._closed:
            raise _unavailable("the database connections are closed")
        if self._slots < self._size:
            self._slots += 1
            return await self._open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
        self._waiters.append((loop.time() + self._timeout, fut))
        if self._timer is None:
            self._timer = loop.call_at(self._waiters[0][0], self._expire)
        try:
            got = await fut
        except BaseException:
            self._abandon(fut)
            raise
        return got if got is not None else await self._open()

    def _expire(self) -> None:
        """Waiters past their deadline get 503; the timer moves on to the next oldest."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiters and (self._waiters[0][0] <= now or self._waiters[0][1].done()):
            _, w = self._waiters.popleft()
            if not w.done():
                w.set_exception(_unavailable("no database connection came free in time"))
        if self._waiters and not self._closed:
            self._timer = loop.call_at(self._waiters[0][0], self._expire)

    def _abandon(self, fut: asyncio.Future[asyncpg.Connection | None]) -> None:
        """A waiter that gives up: what it was handed meanwhile goes to the next one."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            got = fut.result()
            if got is None:
                self._free_slot()
            else:
                self.release(got)
        else:
            fut.cancel()

    async def _open(self) -> asyncpg.Connection:
        """A new connection for a slot already taken; the slot is given back on failure."""
        try:
            conn = await self._connect()
        except BaseException as exc:
            self._free_slot()
            if isinstance(exc, OSError | asyncpg.PostgresError | TimeoutError):
                raise _unavailable() from exc
            raise
        self._all.add(conn)
        if self._closed:
            self._drop(conn)
            await conn.close()
            raise _unavailable("the database connections are closed")
        return conn

    def release(self, conn: asyncpg.Connection) -> None:
        """Back to the next waiter or the free list; a closed one gives up its slot."""
        if self._closed or conn.is_closed():
            self._drop(conn)
            return
        while self._waiters:
            _, w = self._waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        self._free.append(conn)

    def discard(self, conn: asyncpg.Connection) -> None:
        """Never reuse this one (a statement was interrupted: its protocol state is unknown)."""
        conn.terminate()
        self._drop(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        if self._closed and not conn.is_closed():
            self._retire(conn)
            return
        self._all.discard(conn)
        self._free_slot()

    def _retire(self, conn: asyncpg.Connection) -> None:
        """After close(): a busy connection came back; close() closes it."""
        self._free.append(conn)
        self._slots -= 1
        if self._slots <= 0 and self._drained is not None:
            self._drained.set()

    def _free_slot(self) -> None:
        self._slots -= 1
        if self._closed:
            if self._drained is not None and self._slots <= 0:
                self._drained.set()
            return
        while self._waiters:  # the first live waiter opens a connection into the slot
            _, w = self._waiters.popleft()
            if not w.done():
                self._slots += 1
                w.set_result(None)
                return

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, retry: bool) -> T:
        """``fn(conn)`` on a connection. A lost connection is dropped and, with ``retry`` (only
        for what is safe to run twice: reads), the call runs once more on a fresh one."""
        conn = await self.acquire()
        try:
            result = await fn(conn)
        except asyncpg.PostgresError as exc:
            # the server refused the statement; the connection itself is fine (autocommit)
            if isinstance(exc, _LOST) or conn.is_closed():
                self.discard(conn)
                if retry:
                    return await self.run(fn, retry=False)
                raise _unavailable() from exc
            self.release(conn)
            raise
        except _LOST as exc:
            self.discard(conn)
            if retry:
                return await self.run(fn, retry=False)
            raise _unavailable() from exc
        except BaseException:
            self.discard(conn)  # cancelled half way: the connection may be mid-protocol
            raise
        self.release(conn)
        return result

    async def close(self, grace: float = 5.0) -> None:
        """No new work; busy connections get ``grace`` seconds to come back; all closed."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            _, w = self._waiters.popleft()
            if not w.done():
                w.set_exception(_unavailable("the database connections are closed"))
        self._slots -= len(self._free)  # now: the busy ones (handed out or opening)
        if self._slots > 0:
            self._drained = asyncio.Event()
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                pass
        for conn in list(self._all):
            try:
                async with asyncio.timeout(grace):
                    await conn.close()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()
        self._all.clear()
        self._free.clear()

    def stats(self) -> dict[str, Any]:
        return {"open": len(self._all), "free": len(self._free), "waiting": len(self._waiters)}
