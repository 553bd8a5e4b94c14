"""The token read's group-committed audit rows (PostgreSQL): every row lands, each caller
returns only after its row is committed, a lone row is written at once, failures reach
every waiter of the batch, and a cancelled caller takes nobody down with it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.support.hotpath import run_on_hotpath

from grantkeeper.store.hotpath import HotPath
from grantkeeper.store.tables import audit_events


def _run(tmp_path: Path, scenario):  # type: ignore[no-untyped-def]
    run_on_hotpath(tmp_path, lambda hot, engine, _url: scenario(hot, engine))


async def _count(engine) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_events))).scalar_one())


def _row(i: int) -> dict[str, object]:
    return {
        "environment_id": "env",
        "actor": "key:k",
        "now": time.time(),
        "grant_id": f"00000000-0000-0000-0000-{i:012d}",
        "integration_id": "acme",
        "generation": 1,
    }


def test_every_row_is_committed_before_its_caller_returns(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, engine) -> None:  # type: ignore[no-untyped-def]
        await hot.audit_issued(**_row(0))  # type: ignore[arg-type]
        assert await _count(engine) == 1  # a lone row: written at once, visible on return

        async def one(i: int) -> int:
            await hot.audit_issued(**_row(i))  # type: ignore[arg-type]
            # committed (and visible to another connection) by the time the call returns
            async with engine.connect() as conn:
                n = await conn.execute(select(func.count()).select_from(audit_events).where(audit_events.c.grant_id == _row(i)["grant_id"]))
                return int(n.scalar_one())

        seen = await asyncio.gather(*(one(i) for i in range(1, 301)))
        assert seen == [1] * 300
        assert await _count(engine) == 301

    _run(tmp_path, scenario)


def test_a_failed_write_reaches_every_waiter_and_a_cancelled_caller_harms_nobody(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, engine) -> None:  # type: ignore[no-untyped-def]
        # cancel one caller while its batch is in flight: the others still get their rows
        tasks = [asyncio.create_task(hot.audit_issued(**_row(i))) for i in range(50)]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        tasks[10].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 1
        assert all(r is None for i, r in enumerate(results) if i != 10)
        assert await _count(engine) == 50  # the cancelled caller's row was written too

        # a batch that fails: every waiter sees the error, nothing hangs
        bad = dict(_row(99), integration_id="x" * 100)  # over the column's length
        with pytest.raises(Exception):  # noqa: B017 - asyncpg's StringDataRightTruncationError
            await asyncio.wait_for(hot.audit_issued(**bad), 10)  # type: ignore[arg-type]
        await hot.audit_issued(**_row(100))  # type: ignore[arg-type]
        assert await _count(engine) == 51

    _run(tmp_path, scenario)
