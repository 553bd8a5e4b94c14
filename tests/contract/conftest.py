"""Fixtures of the store contract tests: two environments (every lookup must be scoped by
environment, so tests need two). The migrated database per backend and its engine
(``database``, ``engine``) come from ``tests.support.gk``."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.store import environments

NOW = 1_700_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def envs(engine: AsyncEngine) -> tuple[str, str]:
    async with engine.begin() as conn:
        a = await environments.create(conn, "default", NOW)
        b = await environments.create(conn, "staging", NOW + 1)
    return a, b
