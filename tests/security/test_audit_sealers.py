"""Audit sealers per environment (issue 18.3): workers seal different environments' chains
in parallel, and never link one chain twice at once.

Each sealer has its own engine (its own connections), as it would in its own worker
process; events keep arriving while they race.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tests.support.gk import master_key, new_database, require_postgres

from grantkeeper.auditchain import Sealer, seal, verify
from grantkeeper.config import Settings
from grantkeeper.store import audit as store
from grantkeeper.store.db import create_engine
from grantkeeper.store.migrate import upgrade
from grantkeeper.store.tables import audit_events
from grantkeeper.vault import Keyring, Vault

ENVS = ("env-a", "env-b", "env-c")


def _with_engines(
    backend: str, tmp_path: Path, n: int, fn: Callable[[list[AsyncEngine], Vault], Awaitable[None]]
) -> None:
    db = new_database(backend, tmp_path)
    try:
        upgrade(db.url)
        keys = master_key()
        settings = Settings(database_url=db.url, master_keys=SecretStr(keys))

        async def go() -> None:
            engines = [create_engine(settings) for _ in range(n)]
            try:
                await fn(engines, Vault(Keyring.parse(keys)))
            finally:
                for e in engines:
                    await e.dispose()

        asyncio.run(go())
    finally:
        db.drop()


async def _add(engine: AsyncEngine, envs: tuple[str, ...], per_env: int, at: float) -> None:
    events = [
        {
            "environment_id": env,
            "actor": "key:k",
            "action": "token.issued",
            "now": at,
            "grant_id": None,
            "detail": {"i": i},
        }
        for i in range(per_env)
        for env in envs
    ]
    async with engine.begin() as conn:
        await store.append_many(conn, events)


async def _check_chains(engine: AsyncEngine, vault: Vault, envs: tuple[str, ...]) -> None:
    async with engine.connect() as conn:
        dupes = (
            await conn.execute(
                select(audit_events.c.environment_id, audit_events.c.chain_seq)
                .where(audit_events.c.chain_seq.is_not(None))
                .group_by(audit_events.c.environment_id, audit_events.c.chain_seq)
                .having(func.count() > 1)
            )
        ).all()
        assert dupes == []
        for env in envs:
            seqs = (
                (
                    await conn.execute(
                        select(audit_events.c.chain_seq)
                        .where(audit_events.c.environment_id == env)
                        .order_by(audit_events.c.chain_seq)
                    )
                )
                .scalars()
                .all()
            )
            assert seqs == list(range(1, len(seqs) + 1)), env  # every event, no gap
    for env in envs:
        report = await verify(engine, vault, env)
        assert report.ok and report.pending == 0 and report.sealed > 0, report


def test_two_sealers_racing_keep_every_chain_intact(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a slow sealer: time passes between reading a chain's events and reading its head, so
    # without the lock the other sealer commits in between (and links from a stale view)
    chain_head = store.chain_head

    async def slow_head(conn: AsyncConnection, env: str) -> tuple[int, str] | None:
        await asyncio.sleep(0.005)
        return await chain_head(conn, env)

    monkeypatch.setattr(store, "chain_head", slow_head)

    async def go(engines: list[AsyncEngine], vault: Vault) -> None:
        writer, e1, e2 = engines
        old = time.time() - 60
        await _add(writer, ENVS, 40, old)
        # different batch sizes: the two never pick exactly the same events
        sealers = [Sealer(vault, horizon=0, batch=5), Sealer(vault, horizon=0, batch=8)]

        async def drive(s: Sealer, eng: AsyncEngine) -> None:
            for _ in range(25):
                await s.step(eng, time.time())

        async def write() -> None:
            for _ in range(10):  # more events arrive while they seal
                await _add(writer, ENVS, 3, old)
                await asyncio.sleep(0)

        await asyncio.gather(drive(sealers[0], e1), drive(sealers[1], e2), write())
        await seal(e1, vault, time.time(), horizon=0)
        await _check_chains(writer, vault, ENVS)
        assert sum(s.sealed for s in sealers) > 0

    _with_engines(backend, tmp_path, 3, go)


def test_postgres_sealers_passing_at_once_seal_every_event_once(tmp_path: Path) -> None:
    """Two sealers passing at the same moment: each chain is linked by one of them."""
    require_postgres()

    async def go(engines: list[AsyncEngine], vault: Vault) -> None:
        e1, e2 = engines
        await _add(e1, ENVS, 30, time.time() - 60)
        s1, s2 = Sealer(vault, horizon=0), Sealer(vault, horizon=0)
        await asyncio.gather(s1.step(e1, time.time()), s2.step(e2, time.time()))
        # together all of it, and nothing twice
        assert s1.sealed + s2.sealed == 90
        await _check_chains(e1, vault, ENVS)

    _with_engines("postgres", tmp_path, 2, go)


def test_postgres_a_held_chain_does_not_hold_up_the_others(tmp_path: Path) -> None:
    require_postgres()

    async def go(engines: list[AsyncEngine], vault: Vault) -> None:
        holder, sealing = engines
        await _add(holder, ENVS, 5, time.time() - 60)
        async with holder.begin() as conn:
            assert await store.lock_sealer(conn, "env-b")  # "another worker" is sealing env-b
            assert await seal(sealing, vault, time.time(), horizon=0) == 10
            async with sealing.connect() as c2:
                pending = dict(
                    (
                        await c2.execute(
                            select(audit_events.c.environment_id, func.count())
                            .where(audit_events.c.hash.is_(None))
                            .group_by(audit_events.c.environment_id)
                        )
                    ).all()
                )
            assert pending == {"env-b": 5}
        # released: env-b is sealed by the next pass, after the others
        assert await seal(sealing, vault, time.time(), horizon=0) == 5
        await _check_chains(holder, vault, ENVS)

    _with_engines("postgres", tmp_path, 2, go)


def test_worker_comes_back_at_once_only_after_a_full_batch(backend: str, tmp_path: Path) -> None:
    async def go(engines: list[AsyncEngine], vault: Vault) -> None:
        (engine,) = engines
        await _add(engine, ("env-a",), 6, time.time() - 60)
        s = Sealer(vault, horizon=0, batch=4)
        assert await s.step(engine, time.time()) == 4 and s.more
        assert await s.step(engine, time.time()) == 2 and not s.more
        assert await s.step(engine, time.time()) == 0 and not s.more
        await _check_chains(engine, vault, ("env-a",))

    _with_engines(backend, tmp_path, 1, go)


def test_postgres_work_on_all_chains_waits_for_no_sealer_and_holds_them_all(tmp_path: Path) -> None:
    """Dropping a month's partition spans environments: it holds every chain at once."""
    require_postgres()

    async def go(engines: list[AsyncEngine], vault: Vault) -> None:
        holder, sealing = engines
        await _add(holder, ENVS, 3, time.time() - 60)
        async with holder.begin() as conn:
            await store.lock_all_chains(conn)
            assert await seal(sealing, vault, time.time(), horizon=0) == 0
        assert await seal(sealing, vault, time.time(), horizon=0) == 9
        await _check_chains(holder, vault, ENVS)

    _with_engines("postgres", tmp_path, 2, go)
