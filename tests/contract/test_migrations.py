"""The migrations build exactly the schema the code declares, on SQLite and PostgreSQL.

Several people add migrations at once: this catches a second head, a table or column the
code uses but no migration creates, and a migration that does not run on one backend.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from tests.support.gk import new_database

from grantkeeper.store.auditparts import include_name
from grantkeeper.store.migrate import alembic_config, upgrade
from grantkeeper.store.tables import metadata


def test_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}; chain them"


def _diff(url: str) -> list[object]:
    async def run() -> list[object]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": False, "include_name": include_name}), metadata
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_migrated_schema_matches_the_tables(backend: str, tmp_path: Path) -> None:
    db = new_database(backend, tmp_path)
    try:
        upgrade(db.url)
        diff = _diff(db.url)
        assert diff == [], f"migrations and store/tables.py disagree: {diff}"
    finally:
        db.drop()
