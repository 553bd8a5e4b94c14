"""The token read's dedicated PostgreSQL connections (``store.pgconns``, issue 18): a waiter
cancelled after being handed a connection gives it back, a terminated backend is replaced
and the next read works, no free connection in time is a 503, and close is clean."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from tests.support.hotpath import run_on_hotpath

from grantkeeper.errors import StoreUnavailable
from grantkeeper.store.hotpath import HotPath

Scenario = Callable[[HotPath, str], Awaitable[None]]


def _run(tmp_path: Path, scenario: Scenario, *, size: int = 2, timeout: float = 5.0) -> None:
    run_on_hotpath(tmp_path, lambda hot, _engine, url: scenario(hot, url), size=size, timeout=timeout)


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))


def test_a_waiter_cancelled_after_being_handed_a_connection_gives_it_back(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, _url: str) -> None:
        conns = hot.conns
        a = await conns.acquire()
        b = await conns.acquire()
        waiter = asyncio.create_task(conns.acquire())
        await asyncio.sleep(0.05)  # the waiter is queued: both connections are out
        conns.release(a)  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert conns.stats() == {"open": 2, "free": 1, "waiting": 0}
        # the connection is usable and handed out again (not lost, not handed twice)
        again = await asyncio.wait_for(conns.acquire(), 1)
        assert again is a and await again.fetchval("SELECT 1") == 1
        conns.release(again)
        conns.release(b)
        # a waiter cancelled while still waiting is never handed a connection
        x, y = await conns.acquire(), await conns.acquire()
        gone = asyncio.create_task(conns.acquire())
        await asyncio.sleep(0.05)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        conns.release(x)
        conns.release(y)
        assert conns.stats() == {"open": 2, "free": 2, "waiting": 0}

    _run(tmp_path, scenario)


def test_a_terminated_backend_is_replaced_and_the_next_read_works(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, url: str) -> None:
        assert await hot.read_token("nope", None) == (None, None)
        conn = await hot.conns.acquire()
        pid = conn.get_server_pid()
        hot.conns.release(conn)
        admin = await _admin(url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)
        assert await hot.read_token("nope", None) == (None, None)
        # a connection that dies under a statement: the read is retried on a new one
        conn = await hot.conns.acquire()
        pid = conn.get_server_pid()
        hot.conns.release(conn)
        admin = await _admin(url)
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        assert await hot.read_token("nope", None) == (None, None)
        assert await hot.read_token("nope", None) == (None, None)
        fresh = await hot.conns.acquire()
        assert fresh.get_server_pid() != pid
        hot.conns.release(fresh)

    _run(tmp_path, scenario, size=1)


def test_no_connection_in_time_is_store_unavailable(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, _url: str) -> None:
        held = await hot.conns.acquire()
        with pytest.raises(StoreUnavailable) as err:
            await hot.read_token("nope", None)
        assert err.value.status == 503 and err.value.code == "store_unavailable"
        hot.conns.release(held)
        assert await hot.read_token("nope", None) == (None, None)

    _run(tmp_path, scenario, size=1, timeout=0.3)


def test_close_fails_waiters_and_closes_every_connection(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, url: str) -> None:
        conns = hot.conns
        a = await conns.acquire()
        b = await conns.acquire()
        conns.release(a)
        a = await conns.acquire()  # both out now, the one before idle for a moment
        waiter = asyncio.create_task(conns.acquire())
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(hot.close())
        with pytest.raises(StoreUnavailable):
            await waiter
        conns.release(a)  # busy ones that come back while closing are closed too
        await asyncio.sleep(0.05)
        assert not closing.done()  # still waiting for b
        conns.release(b)
        await asyncio.wait_for(closing, 10)
        assert a.is_closed() and b.is_closed()
        with pytest.raises(StoreUnavailable):
            await conns.acquire()
        admin = await _admin(url)
        try:
            left = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert left == 0

    _run(tmp_path, scenario)
