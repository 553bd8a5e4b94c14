"""First start: schema migrations, the ``default`` environment, and one admin key on an empty database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.apikeys import create_key
from grantkeeper.clock import SystemClock
from grantkeeper.config import Settings
from grantkeeper.store import environments
from grantkeeper.store.migrate import upgrade

__all__ = ["DEFAULT_ENVIRONMENT", "ensure_environment", "initialize"]

DEFAULT_ENVIRONMENT = "default"
_BOOTSTRAP_LOCK = 746_532_002


async def ensure_environment(engine: AsyncEngine, name: str) -> str:
    """The id of environment ``name``, creating it if needed (race-safe)."""
    for _ in range(3):
        try:
            async with engine.begin() as conn:
                env_id = await environments.by_name(conn, name)
                if env_id is None:
                    env_id = await environments.create(conn, name, SystemClock().now())
                return env_id
        except IntegrityError:
            continue  # another process created it first
    raise RuntimeError(f"could not create environment {name!r}")


async def initialize(settings: Settings, engine: AsyncEngine) -> str | None:
    """Migrate, ensure ``default``; on an empty database return a new admin key (shown once)."""
    upgrade(settings.database_url)
    env_id = await ensure_environment(engine, DEFAULT_ENVIRONMENT)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # several processes starting together on an empty database print one key
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _BOOTSTRAP_LOCK})
        if await environments.count_keys(conn) > 0:
            return None
        _, key = await create_key(
            conn,
            environment_id=env_id,
            name="initial admin key",
            scopes=["admin"],
            integration_ids=None,
            now=SystemClock().now(),
        )
        return key
