"""Grant counts for /metrics and the dashboard are reused, not recounted per scrape."""

from __future__ import annotations

import asyncio

import pytest

from grantkeeper.counts import CachedCounts

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_counts_are_loaded_once_per_ttl_and_key() -> None:
    now = [100.0]
    cache = CachedCounts(30.0, clock=lambda: now[0])
    loads: list[str] = []

    def loader(key: str, n: int):  # type: ignore[no-untyped-def]
        async def load() -> dict[str, int]:
            loads.append(key)
            await asyncio.sleep(0)  # a query: concurrent askers overlap here
            return {"active": n}

        return load

    # ten concurrent scrapes: one count
    got = await asyncio.gather(*(cache.get("all", loader("all", 1)) for _ in range(10)))
    assert got == [{"active": 1}] * 10 and loads == ["all"]
    now[0] += 29.0
    assert await cache.get("all", loader("all", 2)) == {"active": 1}  # still fresh
    assert await cache.get(("env", None), loader("env", 5)) == {"active": 5}  # its own key
    now[0] += 1.0
    assert await cache.get("all", loader("all", 3)) == {"active": 3}  # ttl passed: recounted
    assert loads == ["all", "env", "all"]


async def test_zero_ttl_counts_every_time() -> None:
    cache = CachedCounts(0.0)
    n = [0]

    async def load() -> dict[str, int]:
        n[0] += 1
        return {"active": n[0]}

    assert await cache.get("k", load) == {"active": 1}
    assert await cache.get("k", load) == {"active": 2}


async def test_forget_drops_the_cached_figures() -> None:
    # an operator who revokes a grant sees it counted at once on this process
    cache = CachedCounts(30.0)
    n = [0]

    async def load() -> dict[str, int]:
        n[0] += 1
        return {"revoked": n[0]}

    assert await cache.get("k", load) == {"revoked": 1}
    assert await cache.get("k", load) == {"revoked": 1}
    cache.forget()
    assert await cache.get("k", load) == {"revoked": 2}
