"""Audit partitioning by month on PostgreSQL (issue 18, item 3): the migration converts a
populated table without losing a row or breaking the chain, the worker creates months
ahead, the retention purge drops whole expired months behind the chain's checkpoint, and
the token read's group-committed INSERT and the sealer work on the partitioned table."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.gk import master_key, new_database, require_postgres

from grantkeeper import auditchain
from grantkeeper.auditchain import seal, verify
from grantkeeper.config import Settings
from grantkeeper.retention import DAY, ensure_months, purge
from grantkeeper.store import audit as audit_store
from grantkeeper.store import auditparts, environments
from grantkeeper.store.auditparts import Month, month_of
from grantkeeper.store.db import create_engine
from grantkeeper.store.hotpath import HotPath
from grantkeeper.store.migrate import alembic_config
from grantkeeper.store.tables import audit_events
from grantkeeper.vault import Keyring, Vault

_BEFORE = "0014_h18r_retention"
KEYS = master_key()


def _alembic(url: str, rev: str, down: bool = False) -> None:
    # alembic's env runs its own event loop: in a thread, as store.migrate does
    errors: list[BaseException] = []

    def go() -> None:
        try:
            (command.downgrade if down else command.upgrade)(alembic_config(url), rev)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=go)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _with_db(tmp_path: Path, rev: str, fn: Callable[[str, AsyncEngine], Awaitable[None]]) -> None:
    require_postgres()
    db = new_database("postgres", tmp_path)
    try:
        _alembic(db.url, rev)
        engine = create_engine(Settings(database_url=db.url, master_keys=KEYS))  # type: ignore[arg-type]

        async def go() -> None:
            try:
                await fn(db.url, engine)
            finally:
                await engine.dispose()

        asyncio.run(go())
    finally:
        db.drop()


async def _rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        r = await conn.execute(select(audit_events).order_by(audit_events.c.id))
        return [dict(m) for m in r.mappings()]


async def _append(engine: AsyncEngine, env: str, ats: list[float]) -> None:
    async with engine.begin() as conn:
        for at in ats:
            await audit_store.append(
                conn, environment_id=env, actor="key:t", action="t.event", now=at
            )


def test_migration_converts_a_populated_table(tmp_path: Path) -> None:
    vault = Vault(Keyring.parse(KEYS))
    now = time.time()
    this = month_of(now)
    old = [now - 400 * DAY, now - 100 * DAY, now - 40 * DAY, now - 3600]

    async def fn(url: str, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            env = await environments.create(conn, "default", now)
        await _append(engine, env, old)
        await seal(engine, vault, now, horizon=0)
        await _append(engine, env, [now - 10])  # not sealed yet
        before = await _rows(engine)
        await asyncio.to_thread(_alembic, url, "head")
        await engine.dispose()  # cached plans name the old table
        assert await _rows(engine) == before
        async with engine.connect() as conn:
            kind = await conn.scalar(
                text("SELECT relkind::text FROM pg_class WHERE relname = 'audit_events'")
            )
            months = await auditparts.list_months(conn)
            default = await conn.scalar(
                text("SELECT to_regclass('audit_events_default') IS NOT NULL")
            )
            seq = await conn.scalar(text("SELECT pg_get_serial_sequence('audit_events', 'id')"))
        assert kind == "p" and default and seq is not None
        assert {month_of(at) for at in old} | {this, this.next()} <= set(months)
        report = await verify(engine, vault, env)
        assert report.ok and report.sealed == 4 and report.pending == 1, report
        # the sealer, the SQLAlchemy INSERT and the token read's group commit all go on
        await _append(engine, env, [now])
        hot = HotPath.for_engine(engine, 2)
        try:
            await asyncio.gather(
                *(
                    hot.audit_issued(
                        environment_id=env,
                        actor="key:k",
                        now=time.time(),
                        grant_id=f"g{i}",
                        integration_id="acme",
                        generation=1,
                    )  # fmt: skip
                    for i in range(20)
                )
            )
        finally:
            await hot.close()
        await seal(engine, vault, time.time() + 1, horizon=0)
        rows = await _rows(engine)
        assert len(rows) == len(before) + 21
        assert min(r["id"] for r in rows[len(before) :]) > max(r["id"] for r in before)
        report = await verify(engine, vault, env)
        assert report.ok and report.sealed == len(rows) and report.pending == 0, report
        # and back
        await engine.dispose()
        await asyncio.to_thread(_alembic, url, _BEFORE, True)
        assert await _rows(engine) == rows
        assert (await verify(engine, vault, env)).ok

    _with_db(tmp_path, _BEFORE, fn)


def test_the_worker_creates_months_ahead(tmp_path: Path) -> None:
    now = time.time()

    async def fn(url: str, engine: AsyncEngine) -> None:
        later = now + 200 * DAY
        made = await ensure_months(engine, later)  # what the worker's housekeeping runs
        m = month_of(later)
        assert made == [m, m.next(), m.next().next()]
        assert await ensure_months(engine, later) == []
        async with engine.begin() as conn:
            assert await auditparts.ensure_ahead(conn, later) == []
            names = {x.name for x in await auditparts.list_months(conn)}
        assert m.next().next().name in names
        # an event of that month lands in its partition (not in the default one)
        async with engine.begin() as conn:
            env = await environments.create(conn, "default", now)
        await _append(engine, env, [later])
        async with engine.connect() as conn:
            n = await conn.scalar(text(f"SELECT count(*) FROM {m.name}"))  # noqa: S608
        assert n == 1

    _with_db(tmp_path, "head", fn)


def test_expired_months_are_dropped_behind_the_checkpoint(tmp_path: Path) -> None:
    vault = Vault(Keyring.parse(KEYS))
    jan, feb, mar = Month(2024, 1), Month(2024, 2), Month(2024, 3)
    now = mar.start + 20 * DAY

    async def fn(url: str, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            for m in (jan, feb, mar):
                for sql in auditparts.attach_sql(m):
                    await conn.execute(text(sql))
            a = await environments.create(conn, "default", now)
            b = await environments.create(conn, "staging", now)
        await _append(engine, a, [jan.start + 1, jan.start + 2, feb.start + 20 * DAY])
        await _append(engine, b, [jan.start + 3])
        await seal(engine, vault, now, horizon=0)
        # a January event that committed late: sealed after February's
        await _append(engine, a, [jan.end - 1])
        await seal(engine, vault, now, horizon=0)
        await _append(engine, a, [mar.start + 1])
        await seal(engine, vault, now, horizon=0)
        settings = Settings(database_url=url, master_keys=KEYS, audit_retention_days=40)  # type: ignore[arg-type]
        # January ended more than 40 days before `now`, but its late event was chained
        # after a February event that is still kept: January waits
        assert feb.start + 20 * DAY > now - 40 * DAY > jan.end
        assert await purge(engine, vault, settings, now) == 0
        async with engine.connect() as conn:
            assert jan in await auditparts.list_months(conn)
        # once February is due too, both go (and the chain verifies from the checkpoint)
        later = feb.end + 40 * DAY + 1
        assert await purge(engine, vault, settings, later) == 5
        async with engine.connect() as conn:
            months = await auditparts.list_months(conn)
        assert jan not in months and feb not in months and mar in months
        ra, rb = await verify(engine, vault, a), await verify(engine, vault, b)
        assert ra.ok and ra.pruned == 4 and ra.sealed == 1, ra
        assert rb.ok and rb.pruned == 1 and rb.sealed == 0, rb
        assert [r["at"] for r in await _rows(engine)] == [mar.start + 1]
        # a tampered chain is never dropped
        await _append(engine, a, [mar.start + 2])
        await seal(engine, vault, later, horizon=0)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE audit_events SET actor = 'key:x' WHERE at = :at"),
                {"at": mar.start + 1},
            )
        assert await purge(engine, vault, settings, mar.end + 41 * DAY) == 0
        async with engine.connect() as conn:
            assert mar in await auditparts.list_months(conn)

    _with_db(tmp_path, "head", fn)


@pytest.mark.parametrize("kind", ["unsealed", "checkpoint"])
def test_a_month_is_not_dropped_while_needed(tmp_path: Path, kind: str) -> None:
    vault = Vault(Keyring.parse(KEYS))
    jan = Month(2024, 1)
    now = jan.end + 100 * DAY

    async def fn(url: str, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            for sql in auditparts.attach_sql(jan):
                await conn.execute(text(sql))
            a = await environments.create(conn, "default", now)
        await _append(engine, a, [jan.start + 1])
        if kind == "checkpoint":
            await seal(engine, vault, now, horizon=0)
            await _append(engine, a, [jan.start + 2])
            await seal(engine, vault, now, horizon=0)
            assert await auditchain.prune(engine, vault, a, cutoff=jan.start + 2, now=now) == 1
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE audit_checkpoints SET pruned = 7"))
        settings = Settings(database_url=url, master_keys=KEYS, audit_retention_days=30)  # type: ignore[arg-type]
        assert await purge(engine, vault, settings, now) == 0
        async with engine.connect() as conn:
            assert jan in await auditparts.list_months(conn)

    _with_db(tmp_path, "head", fn)
