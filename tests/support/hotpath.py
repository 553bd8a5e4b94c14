"""The token read's dedicated connections (``store.hotpath.HotPath``) on a fresh, migrated
PostgreSQL database: the setup the hot-path contract tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.config import Settings
from grantkeeper.store.db import create_engine
from grantkeeper.store.hotpath import HotPath
from grantkeeper.store.migrate import upgrade
from tests.support.gk import new_database, require_postgres

#: (the hot path, an engine on the same database, the database's URL)
Scenario = Callable[[HotPath, AsyncEngine, str], Awaitable[None]]


def run_on_hotpath(tmp_path: Path, scenario: Scenario, *, size: int = 2, timeout: float = 5.0) -> None:
    require_postgres()
    db = new_database("postgres", tmp_path)
    try:
        upgrade(db.url)
        engine = create_engine(Settings(database_url=db.url, master_keys="t:" + "A" * 43 + "="))

        async def go() -> None:
            hot = HotPath.for_engine(engine, size, timeout)
            try:
                await scenario(hot, engine, db.url)
            finally:
                await hot.close()
                await engine.dispose()

        asyncio.run(go())
    finally:
        db.drop()
