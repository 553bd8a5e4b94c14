"""Reads that arrive together share one round trip (the token read's, PostgreSQL).

Under load the token read's cost is dominated by per-statement work: asyncpg's bind,
send and decode in this process, and parse-free execution plus a wake-up in a
PostgreSQL backend on the same two cores. ``GroupRead`` keeps a lone read exactly as
it was (run at once, one prepared statement) and, while ``lanes`` reads are already in
flight, gathers the reads that arrive into the next statement of the "many" form
(``unnest`` of the keys, one row per key). Identical keys waiting together are read
once (a storm of callers for one grant costs one row, not a thousand).

Every read still starts after its caller asked: a caller only ever joins a read that
has not been sent yet, so it never sees a state older than its own request (no cache,
nothing kept between reads). A caller that is cancelled cancels only its own wait; a
failed statement fails exactly the callers whose keys it carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from itertools import islice
from typing import Generic, TypeVar

from grantkeeper.errors import StoreUnavailable

__all__ = ["GroupRead"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _stopped() -> StoreUnavailable:
    return StoreUnavailable("the database reads stopped; retry shortly")


class GroupRead(Generic[K, V]):
    """``await get(key)``: ``one(key)`` when a lane is free, else a share of ``many(keys)``.

    ``many`` returns one value per key, in the order given.
    """

    def __init__(
        self,
        one: Callable[[K], Awaitable[V]],
        many: Callable[[list[K]], Awaitable[Sequence[V]]],
        lanes: int,
        max_batch: int = 256,
    ) -> None:
        self._one = one
        self._many = many
        self._lanes = max(1, lanes)
        self._max_batch = max_batch
        self._busy = 0
        #: keys waiting for the next statement, each with its callers' futures (insertion order)
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: statements of the "many" form sent so far (the bench and the tests read it)
        self.grouped = 0

    async def get(self, key: K) -> V:
        if self._busy < self._lanes and not self._pending:
            # a free lane and nobody queued: the plain statement, in the caller's own task
            self._busy += 1
            try:
                return await self._one(key)
            finally:
                self._busy -= 1
                self._kick()
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        waiters = self._pending.get(key)
        if waiters is None:
            self._pending[key] = [fut]
        else:
            waiters.append(fut)
        self._kick()
        # cancelled here: only this future is cancelled; the read goes on for the others
        return await fut

    def _kick(self) -> None:
        """Start a lane for what is queued, if one is free."""
        if self._pending and self._busy < self._lanes:
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._lane())
            # a lane is its own task: no caller's cancellation takes other callers' reads down
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _lane(self) -> None:
        try:
            while self._pending:
                keys = list(islice(self._pending, self._max_batch))
                waiters = [self._pending.pop(k) for k in keys]
                try:
                    if len(keys) == 1:
                        values: Sequence[V] = (await self._one(keys[0]),)
                    else:
                        self.grouped += 1
                        values = await self._many(keys)
                except BaseException as exc:
                    # cancelled (shutdown): the callers did not cancel, so they get a 503
                    err = exc if isinstance(exc, Exception) else _stopped()
                    for futs in waiters:
                        for f in futs:
                            if not f.done():
                                f.set_exception(err)
                    if err is not exc:
                        raise
                    continue
                for futs, value in zip(waiters, values, strict=True):
                    for f in futs:
                        if not f.done():
                            f.set_result(value)
        finally:
            self._busy -= 1
            if self._busy == 0 and self._pending and not self._tasks - {asyncio.current_task()}:
                # cancelled (shutdown) with nobody left to read: nobody may wait forever
                self._fail_pending(_stopped())

    def _fail_pending(self, exc: BaseException) -> None:
        for futs in self._pending.values():
            for f in futs:
                if not f.done():
                    f.set_exception(exc)
        self._pending.clear()

    async def close(self) -> None:
        """Stop the lanes; whoever still waits learns the reads stopped."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending(_stopped())
