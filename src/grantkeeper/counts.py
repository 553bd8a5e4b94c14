"""Grant counts by status for ``/metrics`` and the admin dashboard.

A ``count(*)`` by status reads every grant (seconds at millions of rows), and a scrape or
a dashboard view must not cost that each time: each answer is reused for ``ttl`` seconds,
and concurrent askers for the same key share one query. The figures are an estimate at
most ``ttl`` seconds old; nothing decides anything on them. A process that changes a
grant's status itself forgets its cached figures (``forget``), so an operator who revokes a
grant in the admin UI sees it counted at once; other processes' changes show within ``ttl``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable

__all__ = ["CachedCounts"]


class CachedCounts:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[Hashable, tuple[float, dict[str, int]]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    async def get(
        self, key: Hashable, load: Callable[[], Awaitable[dict[str, int]]]
    ) -> dict[str, int]:
        hit = self._cache.get(key)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return hit[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._cache.get(key)
            if hit is not None and self._clock() - hit[0] < self._ttl:
                return hit[1]  # another asker loaded it meanwhile
            counts = await load()
            if len(self._cache) > 1000:
                self._cache.clear()  # bounded: keys are environments x integration filters
            self._cache[key] = (self._clock(), counts)
            return counts

    def forget(self) -> None:
        """Drop every cached figure: the next asker loads fresh counts."""
        self._cache.clear()
