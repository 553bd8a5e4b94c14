"""store.groupread: a lone read runs at once; reads arriving while the lanes are busy share
the next statement; identical keys waiting together are read once; a cancelled caller
harms nobody; a failure reaches exactly the callers whose keys it carried."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from grantkeeper.errors import StoreUnavailable
from grantkeeper.store.groupread import GroupRead


class Db:
    """Counts statements; each takes a moment (the lanes are busy meanwhile)."""

    def __init__(self, delay: float = 0.01, fail: set[int] | None = None) -> None:
        self.delay = delay
        self.fail = fail or set()
        self.ones: list[int] = []
        self.manys: list[list[int]] = []

    async def one(self, key: int) -> str:
        self.ones.append(key)
        await asyncio.sleep(self.delay)
        if key in self.fail:
            raise StoreUnavailable("boom")
        return f"v{key}"

    async def many(self, keys: list[int]) -> Sequence[str]:
        self.manys.append(list(keys))
        await asyncio.sleep(self.delay)
        if self.fail & set(keys):
            raise StoreUnavailable("boom")
        return [f"v{k}" for k in keys]


def test_a_lone_read_is_one_statement_at_once() -> None:
    async def go() -> None:
        db = Db()
        g = GroupRead(db.one, db.many, lanes=2)
        assert await g.get(1) == "v1"
        assert await g.get(2) == "v2"
        assert db.ones == [1, 2] and db.manys == []

    asyncio.run(go())


def test_reads_beyond_the_lanes_share_statements_and_identical_keys_are_read_once() -> None:
    async def go() -> None:
        db = Db()
        g = GroupRead(db.one, db.many, lanes=2)
        keys = [i % 50 for i in range(300)]
        values = await asyncio.gather(*(g.get(k) for k in keys))
        assert values == [f"v{k}" for k in keys]  # every caller its own key's value
        statements = len(db.ones) + len(db.manys)
        assert statements <= 4, (db.ones, db.manys)  # 2 lone reads, then batches
        assert db.ones == [0, 1]
        for batch in db.manys:
            assert len(batch) == len(set(batch))  # each key once per statement
        # the keys asked while the lone reads ran: 50 distinct ones in 300 callers
        assert sorted(k for batch in db.manys for k in batch) == list(range(50))

    asyncio.run(go())


def test_a_read_is_never_older_than_its_caller() -> None:
    """A caller never joins a statement already sent: it waits for the next one."""

    async def go() -> None:
        version = 0

        async def one(key: int) -> int:
            seen = version
            await asyncio.sleep(0.02)
            return seen

        async def many(keys: list[int]) -> list[int]:
            seen = version
            await asyncio.sleep(0.02)
            return [seen] * len(keys)

        g = GroupRead(one, many, lanes=1)
        first = asyncio.create_task(g.get(7))
        await asyncio.sleep(0.005)  # the lone read of key 7 is in flight, seeing version 0
        version = 1
        second = await g.get(7)  # asked after the change: must not share the old read
        assert await first == 0
        assert second == 1

    asyncio.run(go())


def test_a_cancelled_caller_cancels_only_itself() -> None:
    async def go() -> None:
        db = Db(delay=0.02)
        g = GroupRead(db.one, db.many, lanes=1)
        lone = asyncio.create_task(g.get(0))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(g.get(k)) for k in (1, 1, 2)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # one of the two callers of key 1
        assert await lone == "v0"
        assert await waiting[1] == "v1" and await waiting[2] == "v2"
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        assert db.manys == [[1, 2]]

    asyncio.run(go())


def test_a_failed_statement_fails_exactly_its_callers() -> None:
    async def go() -> None:
        db = Db(fail={3})
        g = GroupRead(db.one, db.many, lanes=1, max_batch=2)
        lone = asyncio.create_task(g.get(0))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(g.get(k)) for k in (1, 2, 3, 4)]
        results = await asyncio.gather(lone, *rest, return_exceptions=True)
        assert results[:3] == ["v0", "v1", "v2"]
        assert all(isinstance(r, StoreUnavailable) for r in results[3:])  # batch [3, 4]
        assert await g.get(5) == "v5"  # and the reader goes on

    asyncio.run(go())


def test_close_fails_whoever_still_waits_with_a_503_error() -> None:
    async def go() -> None:
        db = Db(delay=1.0)
        g = GroupRead(db.one, db.many, lanes=1)
        lone = asyncio.create_task(g.get(0))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(g.get(1))
        await asyncio.sleep(0)
        batch_started = asyncio.create_task(g.get(2))
        await asyncio.sleep(0)
        lone.cancel()
        await asyncio.gather(lone, return_exceptions=True)  # the lane picks up 1 and 2
        await asyncio.sleep(0.01)
        await g.close()
        for t in (waiting, batch_started):
            with pytest.raises(StoreUnavailable):
                await t

    asyncio.run(go())
