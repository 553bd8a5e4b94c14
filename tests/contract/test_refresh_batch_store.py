"""Store contract of the proactive pipeline (issue 18): batch claims, batched fenced writes,
provider slots across workers, and failures moving the due time. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.contract.test_store_contract import (
    NOW,
    add_grant,
    integration_values,
)

from grantkeeper.refresh import lease, slots
from grantkeeper.refresh.pgbatch import PgBatch
from grantkeeper.store import audit, grants, integrations
from grantkeeper.store import tables as t
from grantkeeper.store.db import reading

pytestmark = pytest.mark.anyio


def _values(n: int) -> dict[str, object]:
    return {
        "access_token_ct": f"at-{n}".encode(),
        "refresh_token_ct": f"rt-{n}".encode(),
        "access_token_expires_at": NOW + 3600 + n,
        "scopes": ["read", f"s{n}"],
        "token_extra": {"n": n},
        "refresh_due_at": NOW + 3000 + n,
        "last_refreshed_at": NOW,
        "retry_at": None,
    }


async def test_claim_due_records_leases_whole_rows_and_moves_them_off_the_due_head(
    engine: AsyncEngine, envs: tuple[str, str]
) -> None:
    a, b = envs
    due = [await add_grant(engine, a, user_id=f"d{i}", refresh_due_at=NOW - 100 + i) for i in range(3)]
    due.append(await add_grant(engine, b, user_id="db", refresh_due_at=NOW - 1))
    await add_grant(engine, a, user_id="later", refresh_due_at=NOW + 100)
    await add_grant(engine, a, user_id="backoff", refresh_due_at=NOW - 100, retry_at=NOW + 50)
    await add_grant(engine, a, user_id="invalid", refresh_due_at=NOW - 100, status="invalid")
    await add_grant(
        engine, a, user_id="leased", refresh_due_at=NOW - 100, lease_owner="x", lease_until=time.time() + 60
    )
    async with engine.begin() as conn:
        first = await lease.claim_due_records(conn, "w1", NOW, 30, 2)
    assert sorted(r.id for r in first) == sorted(due[:2])  # oldest due first
    assert all(r.lease_owner == "w1" and r.refresh_due_at == NOW + 30 for r in first)
    assert first[0].refresh_token_ct == b"\x01refresh" and first[0].version == 1
    async with engine.begin() as conn:
        rest = await lease.claim_due_records(conn, "w2", NOW, 30, 100)
        assert sorted(r.id for r in rest) == sorted(due[2:])  # every environment, never twice
        assert await lease.claim_due_records(conn, "w3", NOW, 30, 100) == []
    async with reading(engine) as conn:
        # leased rows left the head of the due index: the oldest due is the backed-off one
        assert await grants.oldest_due(conn) == NOW - 100
    async with engine.begin() as conn:
        # given back unused: due again at once, lease free (only the owner can)
        assert await lease.release_claimed(conn, [due[0]], "w2", NOW) == 0
        assert await lease.release_claimed(conn, [due[0]], "w1", NOW) == 1
        again = await lease.claim_due_records(conn, "w3", NOW, 30, 100)
    assert [r.id for r in again] == [due[0]]


async def test_claim_due_records_concurrent_claimers_are_disjoint(
    engine: AsyncEngine, envs: tuple[str, str]
) -> None:
    a, _ = envs
    ids = {await add_grant(engine, a, user_id=f"u{i}", refresh_due_at=NOW - i) for i in range(30)}

    async def claimer(owner: str) -> list[str]:
        got: list[str] = []
        for _ in range(3):
            async with engine.begin() as conn:
                got += [r.id for r in await lease.claim_due_records(conn, owner, NOW, 30, 4)]
                await asyncio.sleep(0.02)  # hold the row locks a little
        return got

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    flat = [g for r in results for g in r]
    assert len(flat) == len(set(flat)) and set(flat) <= ids
    async with engine.begin() as conn:
        flat += [r.id for r in await lease.claim_due_records(conn, "last", NOW, 30, 100)]
    assert sorted(flat) == sorted(ids)


async def test_write_tokens_many_fences_each_grant(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    ids = [await add_grant(engine, a, user_id=f"w{i}", refresh_due_at=NOW - 10) for i in range(5)]
    async with engine.begin() as conn:
        claimed = await lease.claim_due_records(conn, "me", NOW, 30, 10)
    assert len(claimed) == 5
    async with engine.begin() as conn:
        # 1: another process refreshed meanwhile (newer generation); 2: went invalid;
        # 3: another owner holds a live lease
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[1]).values(version=2))
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[2]).values(status="invalid"))
        await conn.execute(
            t.grants.update()
            .where(t.grants.c.id == ids[3])
            .values(lease_owner="other", lease_until=time.time() + 60)
        )
    async with engine.begin() as conn:
        written = await lease.write_tokens_many(conn, "me", [(g, 1, _values(i)) for i, g in enumerate(ids)])
    assert written == {ids[0], ids[4]}
    async with reading(engine) as conn:
        recs = {g: await grants.get(conn, a, g) for g in ids}
    r0, r4 = recs[ids[0]], recs[ids[4]]
    assert r0 is not None and r4 is not None
    assert (r0.version, r0.access_token_ct, r0.scopes, r0.token_extra) == (2, b"at-0", ("read", "s0"), {"n": 0})
    assert (r4.version, r4.refresh_token_ct, r4.refresh_due_at, r4.lease_owner) == (2, b"rt-4", NOW + 3004, None)
    assert recs[ids[1]].version == 2 and recs[ids[1]].access_token_ct == b"\x01access"  # type: ignore[union-attr]
    assert recs[ids[2]].status == "invalid" and recs[ids[2]].version == 1  # type: ignore[union-attr]
    assert recs[ids[3]].lease_owner == "other" and recs[ids[3]].version == 1  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="same columns"):
        async with engine.begin() as conn:
            await lease.write_tokens_many(conn, "me", [(ids[0], 2, _values(0)), (ids[4], 2, {"retry_at": None})])


async def test_audit_append_many(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    events = [
        {"environment_id": env, "actor": "system", "action": "grant.refreshed", "now": NOW, "grant_id": f"g{i}",
         "detail": {"trigger": "proactive", "rotated": True}}
        for i, env in enumerate([a, b, a])
    ]  # fmt: skip
    async with engine.begin() as conn:
        await audit.append_many(conn, events)
        await audit.append_many(conn, [])
    async with reading(engine) as conn:
        rows, _ = await audit.list_events(conn, a)
    assert sorted(r["grant_id"] for r in rows) == ["g0", "g2"]
    with pytest.raises(ValueError):
        async with engine.begin() as conn:
            await audit.append_many(conn, [{**events[0], "detail": {"refresh_token": "x"}}])


async def test_failure_moves_the_due_time_to_the_retry(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    g = await add_grant(engine, a, user_id="f", refresh_due_at=NOW - 5)
    never = await add_grant(engine, a, user_id="n", refresh_due_at=None)
    async with engine.begin() as conn:
        assert [r.id for r in await lease.claim_due_records(conn, "me", NOW, 30, 10)] == [g]
        assert await lease.claim(conn, a, never, "me", 30)
        assert await lease.fail(conn, a, g, "me", {"refresh_attempts": 1, "retry_at": NOW + 7}, keep_lease=False)
        assert await lease.fail(conn, a, never, "me", {"refresh_attempts": 1, "retry_at": NOW + 7}, keep_lease=False)
    async with reading(engine) as conn:
        rec = await grants.get(conn, a, g)
        other = await grants.get(conn, a, never)
        assert rec is not None and (rec.refresh_due_at, rec.retry_at, rec.lease_owner) == (NOW + 7, NOW + 7, None)
        # a grant the worker never refreshes stays out of the due index
        assert other is not None and other.refresh_due_at is None
        assert await grants.oldest_due(conn) == NOW + 7


async def test_provider_slots_cap_concurrency_across_owners(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        w1 = await slots.acquire(conn, "idp.example", "w1", 2, 3, 30)
        w2 = await slots.acquire(conn, "idp.example", "w2", 5, 3, 30)
        w3 = await slots.acquire(conn, "idp.example", "w3", 5, 3, 30)
        other = await slots.acquire(conn, "other.example", "w3", 5, 3, 30)
    assert (w1, w2, w3, other) == ([0, 1], [2], [], [0, 1, 2])  # three slots in all
    async with engine.begin() as conn:
        # only the owner renews or releases
        assert await slots.renew(conn, "idp.example", "w2", [0, 1, 2], 30) == [2]
        await slots.release(conn, "idp.example", "w2", [0, 1])
        assert await slots.acquire(conn, "idp.example", "w3", 5, 3, 30) == []
        await slots.release(conn, "idp.example", "w1", [0])
        assert await slots.acquire(conn, "idp.example", "w3", 5, 3, 30) == [0]
        # a lower cap: slots beyond it are never handed out
        assert await slots.acquire(conn, "idp.example", "w4", 5, 1, 30) == []
        n = (await conn.execute(select(func.count()).select_from(t.refresh_slots))).scalar_one()
    assert n == 6
    async with engine.begin() as conn:
        assert await slots.acquire(conn, "exp.example", "w1", 1, 1, 0.5) == [0]
    await asyncio.sleep(0.8)
    async with engine.begin() as conn:
        # an expired slot lease (database time) is taken over; the old owner cannot renew it
        assert await slots.acquire(conn, "exp.example", "w2", 1, 1, 30) == [0]
        assert await slots.renew(conn, "exp.example", "w1", [0], 30) == []


async def test_provider_slots_pool_never_exceeds_the_cap(engine: AsyncEngine) -> None:
    """Two pools (two workers) sharing a cap of 2: never more than 2 holders at once."""
    pools = [
        slots.ProviderSlots(engine, f"w{i}", count=2, seconds=30, call_budget=1.0) for i in range(2)
    ]
    inside = 0
    peak = 0

    async def use(pool: slots.ProviderSlots) -> None:
        nonlocal inside, peak
        async with pool.slot("idp.example", wait=20):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    try:
        await asyncio.gather(*(use(pools[i % 2]) for i in range(24)))
    finally:
        for p in pools:
            await p.close()
    assert peak == 2
    async with reading(engine) as conn:
        owners = (await conn.execute(select(t.refresh_slots.c.owner))).scalars().all()
    assert owners == [None, None]  # closed pools give their slots back


async def test_renew_many_fences_each_grant_on_its_generation_and_lease(
    engine: AsyncEngine, envs: tuple[str, str]
) -> None:
    a, _ = envs
    ids = [await add_grant(engine, a, user_id=f"r{i}", refresh_due_at=NOW - 10) for i in range(6)]
    async with engine.begin() as conn:
        assert len(await lease.claim_due_records(conn, "me", NOW, 30, 10)) == 6
        # 1: newer generation stored meanwhile; 2: went invalid; 3: another owner's live
        # lease; 4: our lease ran out and nobody took it (re-taken); 5: ran out, another
        # process took it and let go after storing the next generation (never re-taken)
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[1]).values(version=2))
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[2]).values(status="invalid"))
        await conn.execute(
            t.grants.update().where(t.grants.c.id == ids[3]).values(lease_owner="other", lease_until=time.time() + 60)
        )
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[4]).values(lease_until=0.0))
        await conn.execute(
            t.grants.update().where(t.grants.c.id == ids[5]).values(lease_owner=None, lease_until=None, version=2)
        )
    async with engine.begin() as conn:
        assert await lease.renew_many(conn, "me", 45, []) == set()
        renewed = await lease.renew_many(conn, "me", 45, [(g, 1) for g in ids])
    assert renewed == {ids[0], ids[4]}
    async with reading(engine) as conn:
        recs = {g: await grants.get(conn, a, g) for g in ids}
    for g in (ids[0], ids[4]):
        r = recs[g]
        assert r is not None and r.lease_owner == "me" and r.lease_until is not None
        assert abs(r.lease_until - (time.time() + 45)) < 5
    assert recs[ids[3]].lease_owner == "other"  # type: ignore[union-attr]
    assert recs[ids[5]].lease_owner is None  # type: ignore[union-attr]


# ------------------------------------------------------- PostgreSQL: refresh.pgbatch


@pytest.fixture
async def pg(engine: AsyncEngine) -> AsyncIterator[PgBatch]:
    if engine.dialect.name != "postgresql":
        pytest.skip("the prepared batch statements are PostgreSQL's")
    batch = PgBatch.for_engine(engine)
    try:
        yield batch
    finally:
        await batch.close()


async def test_pgbatch_claim_matches_the_store(engine: AsyncEngine, envs: tuple[str, str], pg: PgBatch) -> None:
    a, b = envs
    due = [await add_grant(engine, a, user_id=f"d{i}", refresh_due_at=NOW - 100 + i) for i in range(3)]
    due.append(await add_grant(engine, b, user_id="db", refresh_due_at=NOW - 1, token_extra={"x": [1]}))
    await add_grant(engine, a, user_id="later", refresh_due_at=NOW + 100)
    await add_grant(engine, a, user_id="backoff", refresh_due_at=NOW - 100, retry_at=NOW + 50)
    await add_grant(engine, a, user_id="invalid", refresh_due_at=NOW - 100, status="invalid")
    await add_grant(
        engine, a, user_id="leased", refresh_due_at=NOW - 100, lease_owner="x", lease_until=time.time() + 60
    )
    first = await pg.claim("w1", NOW, 30, 2)
    assert [r.id for r in first] and sorted(r.id for r in first) == sorted(due[:2])  # oldest due first
    rest = await pg.claim("w2", NOW, 30, 100)
    assert sorted(r.id for r in rest) == sorted(due[2:])  # every environment, never twice
    assert await pg.claim("w3", NOW, 30, 100) == []
    async with reading(engine) as conn:
        for r in first + rest:
            # every column, typed as the store reads it (the record is built positionally)
            assert r == await grants.get(conn, r.environment_id, r.id)
            assert r.refresh_due_at == NOW + 30 and r.lease_owner in ("w1", "w2")
            assert isinstance(r.scopes, tuple)


async def test_pgbatch_claimers_are_disjoint(engine: AsyncEngine, envs: tuple[str, str], pg: PgBatch) -> None:
    a, _ = envs
    ids = [await add_grant(engine, a, user_id=f"c{i}", refresh_due_at=NOW - 10) for i in range(40)]
    other = PgBatch.for_engine(engine)
    try:
        got = await asyncio.gather(*(b.claim(f"o{i}", NOW, 30, 7) for i, b in enumerate([pg, other] * 4)))
    finally:
        await other.close()
    flat = [r.id for rs in got for r in rs]
    flat += [r.id for r in await pg.claim("last", NOW, 30, 100)]
    assert sorted(flat) == sorted(ids)


async def test_pgbatch_renew_many_fences_like_the_store(
    engine: AsyncEngine, envs: tuple[str, str], pg: PgBatch
) -> None:
    a, _ = envs
    ids = [await add_grant(engine, a, user_id=f"r{i}", refresh_due_at=NOW - 10) for i in range(6)]
    assert len(await pg.claim("me", NOW, 30, 10)) == 6
    async with engine.begin() as conn:
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[1]).values(version=2))
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[2]).values(status="invalid"))
        await conn.execute(
            t.grants.update().where(t.grants.c.id == ids[3]).values(lease_owner="other", lease_until=time.time() + 60)
        )
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[4]).values(lease_until=0.0))
        await conn.execute(
            t.grants.update().where(t.grants.c.id == ids[5]).values(lease_owner=None, lease_until=None, version=2)
        )
    assert await pg.renew_many("me", 45, []) == set()
    assert await pg.renew_many("me", 45, [(g, 1) for g in ids]) == {ids[0], ids[4]}
    async with reading(engine) as conn:
        recs = {g: await grants.get(conn, a, g) for g in ids}
    for g in (ids[0], ids[4]):
        r = recs[g]
        assert r is not None and r.lease_owner == "me" and r.lease_until is not None
        assert abs(r.lease_until - (time.time() + 45)) < 5
    assert recs[ids[3]].lease_owner == "other"  # type: ignore[union-attr]
    assert recs[ids[5]].lease_owner is None  # type: ignore[union-attr]


async def test_pgbatch_write_many_fences_each_grant_and_audits_what_it_wrote(
    engine: AsyncEngine, envs: tuple[str, str], pg: PgBatch
) -> None:
    a, _ = envs
    ids = [await add_grant(engine, a, user_id=f"w{i}", refresh_due_at=NOW - 10) for i in range(5)]
    assert len(await pg.claim("me", NOW, 30, 10)) == 5
    async with engine.begin() as conn:
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[1]).values(version=2))
        await conn.execute(t.grants.update().where(t.grants.c.id == ids[2]).values(status="invalid"))
        await conn.execute(
            t.grants.update().where(t.grants.c.id == ids[3]).values(lease_owner="other", lease_until=time.time() + 60)
        )
    rows = [(g, 1, _values(i), NOW + i, i % 2 == 0) for i, g in enumerate(ids)]
    assert await pg.write_many("me", rows) == {ids[0], ids[4]}
    async with reading(engine) as conn:
        recs = {g: await grants.get(conn, a, g) for g in ids}
        events, _ = await audit.list_events(conn, a)
    r0, r4 = recs[ids[0]], recs[ids[4]]
    assert r0 is not None and r4 is not None
    assert (r0.version, r0.access_token_ct, r0.scopes, r0.token_extra) == (2, b"at-0", ("read", "s0"), {"n": 0})
    assert (r4.version, r4.refresh_token_ct, r4.refresh_due_at, r4.lease_owner) == (2, b"rt-4", NOW + 3004, None)
    assert recs[ids[1]].version == 2 and recs[ids[1]].access_token_ct == b"\x01access"  # type: ignore[union-attr]
    assert recs[ids[2]].status == "invalid" and recs[ids[2]].version == 1  # type: ignore[union-attr]
    assert recs[ids[3]].lease_owner == "other" and recs[ids[3]].version == 1  # type: ignore[union-attr]
    refreshed = sorted(
        (e["grant_id"], e["at"], e["actor"], e["detail"], e["integration_id"])
        for e in events
        if e["action"] == "grant.refreshed"
    )
    assert refreshed == sorted(
        (g, NOW + i, "system", {"trigger": "proactive", "rotated": True}, recs[g].integration_id)  # type: ignore[union-attr]
        for i, g in ((0, ids[0]), (4, ids[4]))
    )
    # the detail is stored as the SQLAlchemy JSON type writes it (the audit chain hashes it)
    async with reading(engine) as conn:
        raw = (
            await conn.execute(
                select(sa.cast(t.audit_events.c.detail, sa.Text)).where(t.audit_events.c.grant_id == ids[0])
            )
        ).scalar_one()
    assert raw == '{"trigger": "proactive", "rotated": true}'
    with pytest.raises(ValueError, match="same columns"):
        await pg.write_many("me", [(ids[0], 2, _values(0), NOW, False), (ids[4], 2, {"retry_at": None}, NOW, False)])


async def test_pgbatch_integrations_read_as_the_store_reads_them(
    engine: AsyncEngine, envs: tuple[str, str], pg: PgBatch
) -> None:
    a, b = envs
    async with engine.begin() as conn:
        await integrations.upsert(conn, a, "acme", integration_values(), NOW)
        await integrations.upsert(
            conn,
            a,
            "beta",
            integration_values(
                client_id="c2",
                scopes=["read", "write"],
                authorization_params={"prompt": "consent"},
                settings={"x": "y"},
                endpoints=None,
            ),
            NOW,
        )
        await integrations.upsert(conn, b, "acme", integration_values(client_id="other-env"), NOW)
    keys = [(a, "acme"), (a, "beta"), (b, "acme"), (a, "missing"), (b, "beta")]
    got = await pg.integrations(keys)
    assert sorted(got) == sorted(keys[:3])
    async with reading(engine) as conn:
        for env, iid in keys[:3]:
            assert got[(env, iid)] == await integrations.get(conn, env, iid)
    assert got[(a, "beta")].scopes == ("read", "write")
    assert await pg.integrations([]) == {}
