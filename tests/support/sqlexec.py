"""Run SQL directly against a test database (to plant rows an older version could write)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from tests.support.gk import Database

__all__ = ["sql_exec", "sql_rows"]


def _pg_dsn(db: Database) -> str:
    return db.url.replace("postgresql+asyncpg://", "postgresql://")


def sql_rows(db: Database, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` with positional ``?`` parameters; returns the rows (if any)."""
    if db.backend == "sqlite":
        path = db.url.split(":///", 1)[1]
        with sqlite3.connect(path, timeout=15) as conn:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]
    import asyncpg

    n = 0

    def dollar(_m: Any) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    import re

    pg_sql = re.sub(r"\?", dollar, sql)

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(_pg_dsn(db))
        try:
            return [tuple(r) for r in await conn.fetch(pg_sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


def sql_exec(db: Database, sql: str, *args: Any) -> None:
    sql_rows(db, sql, *args)
