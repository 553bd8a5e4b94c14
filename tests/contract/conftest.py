"""Fixtures of the store contract tests: a migrated database per backend, its engine and
two environments (every lookup must be scoped by environment, so tests need two)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.gk import Database, master_key, new_database

from grantkeeper.config import Settings
from grantkeeper.store import environments
from grantkeeper.store.db import create_engine
from grantkeeper.store.migrate import upgrade

NOW = 1_700_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    db = new_database(backend, tmp_path)
    upgrade(db.url)
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(Settings(database_url=database.url, master_keys=master_key(), db_pool_size=8))  # type: ignore[arg-type]
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def envs(engine: AsyncEngine) -> tuple[str, str]:
    async with engine.begin() as conn:
        a = await environments.create(conn, "default", NOW)
        b = await environments.create(conn, "staging", NOW + 1)
    return a, b
