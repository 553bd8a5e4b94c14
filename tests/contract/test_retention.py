"""The retention purge (issue 18, item 3): bounded batches through an index, nothing still
needed is deleted, and the audit chain still verifies, from its checkpoint, after pruning."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from sqlalchemy import Delete, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.contract.conftest import NOW
from tests.support.gk import master_key

from grantkeeper import auditchain
from grantkeeper.auditchain import prune, seal, verify
from grantkeeper.config import Settings
from grantkeeper.retention import DAY, purge
from grantkeeper.store import audit as audit_store
from grantkeeper.store import retention
from grantkeeper.store.tables import (
    audit_checkpoints,
    audit_events,
    connect_sessions,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
)
from grantkeeper.vault import Keyring, Vault

pytestmark = pytest.mark.anyio

OLD = NOW - 40 * DAY
RECENT = NOW - 1 * DAY
CUTOFF = NOW - 30 * DAY


def _settings(engine: AsyncEngine, **kw: Any) -> Settings:
    return Settings(database_url=str(engine.url), master_keys=master_key(), **kw)  # type: ignore[arg-type]


async def _drain(engine: AsyncEngine, vault: Vault, settings: Settings, now: float = NOW) -> int:
    """Passes back to back until one finds nothing (as the worker's loop does)."""
    total, passes = 0, 0
    while n := await purge(engine, vault, settings, now):
        total += n
        passes += 1
        assert passes < 100
    return total


@pytest.fixture
def vault() -> Vault:
    return Vault(Keyring.parse(master_key()))


# ---------------------------------------------------------------- webhooks, connect sessions


async def _event(engine: AsyncEngine, env: str, at: float, statuses: list[str]) -> str:
    eid = "evt_" + secrets.token_hex(8)
    async with engine.begin() as conn:
        await conn.execute(
            insert(webhook_events).values(
                id=eid,
                environment_id=env,
                type="grant.updated",
                grant_id=None,
                payload={},
                created_at=at,
            )
        )
        for st in statuses:
            await conn.execute(
                insert(webhook_deliveries).values(
                    event_id=eid, endpoint_id="ep-1", environment_id=env, status=st, attempts=1,
                    next_attempt_at=at if st == "pending" else None, created_at=at,
                )
            )  # fmt: skip
    return eid


async def test_finished_webhooks_go_pending_ones_stay(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    a, b = envs
    async with engine.begin() as conn:
        await conn.execute(
            insert(webhook_endpoints).values(
                id="ep-1",
                environment_id=a,
                url="https://h.example/",
                events=["*"],
                secret_ct=b"x",
                created_at=OLD,
            )
        )
    done = [await _event(engine, a, OLD, ["succeeded", "failed"]) for _ in range(3)]
    nobody = await _event(engine, b, OLD, [])  # no endpoint wanted it
    retrying = await _event(engine, a, OLD, ["succeeded", "pending"])
    recent = await _event(engine, a, RECENT, ["succeeded"])
    # batches of 2: several passes drain it
    assert (
        await _drain(engine, vault, _settings(engine, purge_batch=2, audit_retention_days=0))
        == 7 + 4
    )
    async with engine.connect() as conn:
        left = {r[0] for r in await conn.execute(select(webhook_events.c.id))}
        deliveries = [
            (r[0], r[1])
            for r in await conn.execute(
                select(webhook_deliveries.c.event_id, webhook_deliveries.c.status)
            )
        ]
    assert left == {retrying, recent}
    assert sorted(deliveries) == sorted([(retrying, "pending"), (recent, "succeeded")])
    assert not set(done) & left and nobody not in left
    # once the pending delivery finishes, it and its event go too
    async with engine.begin() as conn:
        await conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.event_id == retrying)
            .values(status="failed")
        )
    assert await _drain(engine, vault, _settings(engine, audit_retention_days=0)) == 2
    # 0 keeps forever
    assert (
        await _drain(
            engine,
            vault,
            _settings(engine, webhook_retention_days=0, audit_retention_days=0),
            NOW + 400 * DAY,
        )
        == 0
    )


async def _session(engine: AsyncEngine, env: str, **values: Any) -> str:
    sid = secrets.token_hex(8)
    row = {
        "id": sid, "environment_id": env, "integration_id": "i", "user_id": "u",
        "return_to": "https://app.example/", "status": "completed",
        "url_token_hash": secrets.token_bytes(32), "consent": False, "created_at": OLD,
        "expires_at": OLD + 600, "export_status": "none",
    }  # fmt: skip
    row.update(values)
    async with engine.begin() as conn:
        await conn.execute(insert(connect_sessions).values(**row))
    return sid


async def test_ended_connect_sessions_go_usable_ones_stay(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    a, _ = envs
    ended = [
        await _session(engine, a),
        await _session(engine, a, status="failed"),
        await _session(engine, a, status="pending"),
    ]
    retrieved = await _session(engine, a, export_status="retrieved", export_expires_at=OLD + 1200)
    export_expired = await _session(
        engine, a, export_status="available", export_expires_at=OLD + 1200
    )
    keep = {
        # still usable
        await _session(engine, a, status="pending", created_at=NOW - 60, expires_at=NOW + 540),
        # ended, but within the retention
        await _session(engine, a, expires_at=NOW - 6 * DAY),
        # its one-time export is still available (an export TTL far beyond the default)
        await _session(engine, a, export_status="available", export_expires_at=NOW + 60),
    }
    assert (
        await _drain(engine, vault, _settings(engine, purge_batch=2, audit_retention_days=0)) == 5
    )
    async with engine.connect() as conn:
        left = {r[0] for r in await conn.execute(select(connect_sessions.c.id))}
    assert left == keep
    assert not {*ended, retrieved, export_expired} & left


# ---------------------------------------------------------------- the audit chain


async def _audit(engine: AsyncEngine, env: str, ats: list[float]) -> None:
    async with engine.begin() as conn:
        for at in ats:
            await audit_store.append(
                conn, environment_id=env, actor="key:t", action="t.event", now=at
            )


async def _ids(engine: AsyncEngine, env: str) -> list[int]:
    """The environment's sealed events, in chain order."""
    async with engine.connect() as conn:
        r = await conn.execute(
            select(audit_events.c.id)
            .where(audit_events.c.environment_id == env, audit_events.c.chain_seq.is_not(None))
            .order_by(audit_events.c.chain_seq)
        )
        return [int(x[0]) for x in r]


async def _checkpoint(engine: AsyncEngine, env: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        cp = await audit_store.get_checkpoint(conn, env)
    assert cp is not None
    return cp


async def _exec(engine: AsyncEngine, *stmts: Any) -> None:
    async with engine.begin() as conn:
        for st in stmts:
            await conn.execute(st)


async def test_pruned_chain_verifies_from_its_checkpoint(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    a, b = envs
    await _audit(engine, a, [OLD + i for i in range(5)] + [RECENT + i for i in range(3)])
    await _audit(engine, b, [OLD, RECENT])
    # one event not sealed yet (it is old, but has no place in the chain): never pruned
    await seal(engine, vault, NOW, horizon=0)
    await _audit(engine, a, [OLD + 10])
    before = await _ids(engine, a)
    settings = _settings(engine, purge_batch=2, webhook_retention_days=0, audit_retention_days=30)
    assert await _drain(engine, vault, settings) == 5 + 1
    assert await _ids(engine, a) == before[5:]  # the recent ones
    report = await verify(engine, vault, a)
    assert report.ok, report
    assert report.pruned == 5 and report.sealed == 3 and report.pending == 1
    assert report.checkpoint is not None and report.checkpoint["event_id"] == before[4]
    assert report.as_dict()["pruned"] == 5
    assert (await verify(engine, vault, b)).ok
    # the chain goes on: the late event is sealed after the checkpoint's successors
    await seal(engine, vault, NOW, horizon=0)
    assert (await verify(engine, vault, a)).ok


async def test_tampering_after_a_prune_is_still_named(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    a, _ = envs
    await _audit(engine, a, [OLD + i for i in range(4)] + [RECENT + i for i in range(3)])
    await seal(engine, vault, NOW, horizon=0)
    await prune(engine, vault, a, cutoff=OLD + 2, now=NOW)  # the first two
    first_cp = await _checkpoint(engine, a)
    await prune(engine, vault, a, cutoff=CUTOFF, now=NOW)  # the next two
    cp = await _checkpoint(engine, a)
    assert cp["pruned"] == 4
    ids = await _ids(engine, a)
    cpt = audit_checkpoints.c
    restore = (
        update(audit_checkpoints)
        .where(cpt.environment_id == a)
        .values(**{k: cp[k] for k in cp if k != "environment_id"})
    )

    # an edited checkpoint (claiming fewer pruned events, or another position)
    await _exec(engine, update(audit_checkpoints).where(cpt.environment_id == a).values(pruned=1))
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "checkpoint", r
    await _exec(engine, restore)
    assert (await verify(engine, vault, a)).ok

    # a checkpoint forged without the chain key
    forged = dict(cp, chain_seq=cp["chain_seq"] + 1)
    forged["mac"] = auditchain.checkpoint_mac(b"k" * 32, forged)
    await _exec(
        engine,
        update(audit_checkpoints)
        .where(cpt.environment_id == a)
        .values(chain_seq=forged["chain_seq"], mac=forged["mac"]),
    )
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "checkpoint"
    await _exec(engine, restore)

    # an older (genuine) checkpoint put back: the events pruned since are missing
    await _exec(
        engine,
        update(audit_checkpoints)
        .where(cpt.environment_id == a)
        .values(**{k: first_cp[k] for k in first_cp if k != "environment_id"}),
    )
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "deleted" and r.broken.event_id == ids[0], r
    await _exec(engine, restore)

    # the checkpoint deleted: the first remaining event links to an event that is gone
    await _exec(engine, delete(audit_checkpoints))
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "deleted" and r.broken.event_id == ids[0]
    await _exec(engine, insert(audit_checkpoints).values(**cp))
    assert (await verify(engine, vault, a)).ok

    # the oldest remaining event deleted, one edited, one moved before the checkpoint
    await _exec(
        engine, update(audit_events).where(audit_events.c.id == ids[1]).values(actor="key:x")
    )
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "edited" and r.broken.event_id == ids[1]
    await _exec(engine, update(audit_events).where(audit_events.c.id == ids[1]).values(chain_seq=1))
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "checkpoint" and r.broken.event_id == ids[1]
    await _exec(engine, delete(audit_events).where(audit_events.c.id == ids[1]))
    await _exec(engine, delete(audit_events).where(audit_events.c.id == ids[0]))
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.kind == "deleted" and r.broken.event_id == ids[2]


async def test_prune_never_destroys_evidence(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    a, _ = envs
    await _audit(engine, a, [OLD + i for i in range(4)] + [RECENT])
    await seal(engine, vault, NOW, horizon=0)
    ids = await _ids(engine, a)
    await _exec(
        engine, update(audit_events).where(audit_events.c.id == ids[2]).values(actor="key:x")
    )
    # the two before the edit may go; the edited one and everything after it stay
    assert await prune(engine, vault, a, cutoff=CUTOFF, now=NOW) == 0
    assert await _ids(engine, a) == ids
    r = await verify(engine, vault, a)
    assert r.broken is not None and r.broken.event_id == ids[2]


async def test_everything_pruned_then_the_chain_goes_on(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    a, _ = envs
    await _audit(engine, a, [OLD, OLD + 1])
    await seal(engine, vault, NOW, horizon=0)
    assert await prune(engine, vault, a, cutoff=CUTOFF, now=NOW) == 2
    r = await verify(engine, vault, a)
    assert r.ok and r.sealed == 0 and r.pruned == 2 and r.head_id is not None
    await _audit(engine, a, [RECENT])
    await seal(engine, vault, NOW, horizon=0)
    async with engine.connect() as conn:
        (seq,) = (await conn.execute(select(audit_events.c.chain_seq))).one()
    assert seq == 3  # after the checkpoint's position, not a new chain
    r = await verify(engine, vault, a)
    assert r.ok and r.sealed == 1 and r.pruned == 2, r


async def test_an_event_sealed_late_waits_for_those_sealed_before_it(
    engine: AsyncEngine, envs: tuple[str, str], vault: Vault
) -> None:
    """Pruning follows the chain, not the clock: an old event sealed after a recent one
    (a transaction that committed late) goes only when everything before it may go."""
    a, _ = envs
    await _audit(engine, a, [OLD, RECENT])
    await seal(engine, vault, NOW, horizon=0)
    await _audit(engine, a, [OLD + 5])  # committed late, with its old timestamp
    await seal(engine, vault, NOW, horizon=0)
    ids = await _ids(engine, a)
    assert await prune(engine, vault, a, cutoff=CUTOFF, now=NOW) == 1
    assert await _ids(engine, a) == ids[1:]
    assert (await verify(engine, vault, a)).ok


# ---------------------------------------------------------------- plans


def _statements() -> dict[str, tuple[Any, str]]:
    return {
        "deliveries": (
            retention.finished_deliveries(CUTOFF, 1000),
            "ix_webhook_deliveries_finished",
        ),
        "events": (retention.undelivered_events(CUTOFF, 1000), "ix_webhook_events_created"),
        "sessions": (retention.ended_sessions(NOW, CUTOFF, 1000), "ix_connect_sessions_expires"),
        "audit": (
            delete(audit_events).where(
                audit_events.c.environment_id == "e",
                audit_events.c.chain_seq > 10,
                audit_events.c.chain_seq <= 20,
            ),
            "ix_audit_env_chain",
        ),
    }


@pytest.mark.parametrize("name", list(_statements()))
async def test_purge_deletes_through_an_index(engine: AsyncEngine, name: str) -> None:
    stmt, index = _statements()[name]
    assert isinstance(stmt, Delete)
    if name == "audit":
        # enough of a chain that the planner tells the indexes apart (on PostgreSQL each
        # month has its own copy of the index, named after the partition)
        async with engine.begin() as conn:
            await conn.execute(
                insert(audit_events),
                [
                    {"environment_id": env, "at": RECENT, "actor": "key:t", "action": "t.event",
                     "detail": {}, "hash": "h", "prev_hash": "p", "chain_seq": i}
                    for env in ("e", "f") for i in range(1, 1001)
                ],
            )  # fmt: skip
        async with engine.connect() as conn:
            await conn.execute(
                text("ANALYZE audit_events" if conn.dialect.name == "postgresql" else "ANALYZE")
            )
            await conn.commit()
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            sql = str(
                stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
            )
            # tiny tables: rule out the plans a big table would not get (a missing index
            # still shows as a Seq Scan)
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(r[0] for r in await conn.execute(text("EXPLAIN " + sql)))
            assert "Seq Scan" not in plan, plan
        else:
            sql = str(
                stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
            )
            plan = "\n".join(
                str(r[-1]) for r in await conn.execute(text("EXPLAIN QUERY PLAN " + sql))
            )
            assert all(
                "USING" in line for line in plan.splitlines() if line.startswith(("SCAN", "SEARCH"))
            ), plan
    if name == "audit" and "ix_audit_env_chain" not in plan:
        assert "_environment_id_chain_seq_idx" in plan, plan  # the partitions' copies
    else:
        assert index in plan, plan
    if name == "events":  # "does the event still have a delivery" is an index lookup too
        assert "ix_webhook_deliveries_event" in plan, plan
