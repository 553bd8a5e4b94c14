"""Key rotation pages through every table holding secrets in (environment_id, id) order; each
page must be one index range, not a scan and sort from the start (quadratic at 1M grants)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.contract.test_store_contract import (
    add_grant,
)

from grantkeeper import rotation

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("target", [t.name for t in rotation._TARGETS])
async def test_rotation_pages_use_the_keyset_index(
    engine: AsyncEngine, envs: tuple[str, str], target: str
) -> None:
    t = next(t for t in rotation._TARGETS if t.name == target)
    a, _ = envs
    if target == "grants":
        for i in range(5):
            await add_grant(engine, a, user_id=f"k{i}")
    cols: list[Column[Any]] = [t.table.c.environment_id, t.table.c.id]
    q = rotation.page_query(t, cols, (a, "00000000-0000-0000-0000-000000000000"), 500)
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            sql = str(q.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            # tiny tables: rule out the plans a big table would not get; a sort still shows
            # when no index gives the order
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                await conn.execute(text(f"SET LOCAL {setting} = off"))
            plan = "\n".join(r[0] for r in await conn.execute(text("EXPLAIN " + sql)))
            assert "Sort" not in plan, plan
        else:
            sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
            plan = "\n".join(str(r[-1]) for r in await conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "TEMP B-TREE" not in plan, plan
    if target != "integrations":  # integrations: its primary key is (environment_id, id)
        assert f"ix_{target}_env_id" in plan, plan
