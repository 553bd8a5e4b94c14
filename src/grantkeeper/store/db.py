"""Engines: SQLite (WAL, busy timeout, foreign keys) and PostgreSQL (asyncpg, small pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from grantkeeper.config import Settings

__all__ = ["create_engine", "reading"]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            settings.database_url,
            connect_args={"timeout": 15},
            pool_size=settings.db_pool_size,
            max_overflow=4,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)

        # SQLite's own BEGIN is deferred; take the write lock at BEGIN so that a
        # read-then-write transaction never fails with "database is locked"
        # half way (the write-serialisation SQLite offers instead of row locks)
        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            read = conn.get_execution_options().get("gk_read")
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        @event.listens_for(engine.sync_engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    return create_async_engine(
        settings.database_url,
        # the same cap as "db_pool_size + 4 x overflow", but all of it pooled: overflow
        # connections are closed whenever they come back to a full pool, and under
        # sustained concurrency (the proactive refresh worker, refresh storms) that
        # reconnected several times per second (connect, TLS probe, codec setup, and
        # the prepared statement cache lost each time). Connections open only on demand.
        pool_size=settings.db_pool_size * 5,
        max_overflow=0,
        pool_pre_ping=False,
        # asyncpg's reset-on-release costs more than the query (PERF-NOTES)
        pool_reset_on_return="rollback",
    )


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction: on SQLite a deferred BEGIN, so readers never queue for the writer."""
    async with engine.connect() as conn:
        await conn.execution_options(gk_read=True)
        yield conn
