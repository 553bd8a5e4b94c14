"""One store suite, run against SQLite and PostgreSQL (Hydra's manager conformance tests).

Every store function takes the caller's connection and never commits: the
caller owns the transaction (the last test proves it).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from grantkeeper.refresh import lease
from grantkeeper.store import audit, connect, environments, grants, integrations, keys, webhooks
from grantkeeper.store import tables as t
from grantkeeper.store.db import reading

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0


# ------------------------------------------------------------------ helpers


def integration_values(**over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "provider": "oauth2",
        "display_name": None,
        "client_id": "client-1",
        "client_secret_ct": b"\x01sealed",
        "scopes": ["read"],
        "return_urls": ["https://app.example.com/done"],
        "authorization_params": {},
        "issuer": None,
        "endpoints": {"authorization_url": "https://p.example/a", "token_url": "https://p.example/t"},
        "settings": {},
        "api_base_url": None,
        "token_export": "never",
        "connect_page": False,
    }
    v.update(over)
    return v


def grant_values(env: str, **over: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "environment_id": env,
        "integration_id": "acme",
        "provider": "oauth2",
        "user_id": "user-1",
        "provider_account_id": "",
        "status": "active",
        "scopes": ["read"],
        "token_type": "Bearer",
        "access_token_ct": b"\x01access",
        "refresh_token_ct": b"\x01refresh",
        "id_token_ct": None,
        "access_token_expires_at": NOW + 3600,
        "version": 1,
        "refresh_attempts": 0,
        "token_extra": {},
        "created_via": "import",
        "created_at": NOW,
        "updated_at": NOW,
    }
    v.update(over)
    return v


def session_values(env: str, **over: Any) -> dict[str, Any]:
    sid = str(uuid.uuid4())
    v: dict[str, Any] = {
        "id": sid,
        "environment_id": env,
        "integration_id": "acme",
        "user_id": "user-1",
        "return_to": "https://app.example.com/done",
        "scopes": None,
        "status": "authorizing",
        "url_token_hash": hashlib.sha256(("url" + sid).encode()).digest(),
        "state_hash": hashlib.sha256(("state" + sid).encode()).digest(),
        "verifier_ct": b"\x01verifier",
        "consent": False,
        "created_at": NOW,
        "expires_at": NOW + 600,
        "export_status": "none",
    }
    v.update(over)
    return v


async def add_grant(engine: AsyncEngine, env: str, **over: Any) -> str:
    values = grant_values(env, **over)
    async with engine.begin() as conn:
        await grants.insert_grant(conn, values)
    return str(values["id"])


_endpoint_seq = iter(range(1_000_000))


async def add_endpoint(conn: AsyncConnection, env: str, events: list[str]) -> str:
    """An endpoint created a second after the previous one (listing is in creation order)."""
    eid = str(uuid.uuid4())
    await webhooks.insert_endpoint(
        conn,
        {
            "id": eid,
            "environment_id": env,
            "url": "https://hooks.example.com/x",
            "events": events,
            "secret_ct": b"\x01whsec",
            "created_at": NOW + next(_endpoint_seq),
        },
    )
    return eid


# ------------------------------------------------------------------ environments


async def test_environments(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with reading(engine) as conn:
        assert await environments.by_name(conn, "default") == a
        assert await environments.by_name(conn, "staging") == b
        assert await environments.by_name(conn, "nope") is None
        assert [(i, n) for i, n, _ in await environments.list_all(conn)] == [(a, "default"), (b, "staging")]
        assert await environments.count_keys(conn) == 0
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await environments.create(conn, "default", NOW)


# ------------------------------------------------------------------ API keys


async def test_api_keys_insert_get_revoke(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    h = hashlib.sha256(b"secret").digest()
    async with engine.begin() as conn:
        await keys.insert_key(
            conn, key_id="k1", environment_id=a, name="one", secret_hash=h, scopes=["admin"], integration_ids=None, now=NOW
        )
        await keys.insert_key(
            conn,
            key_id="k2",
            environment_id=b,
            name="two",
            secret_hash=h,
            scopes=["grants:read", "connect"],
            integration_ids=["acme", "beta"],
            now=NOW + 1,
        )
    async with reading(engine) as conn:
        k1 = await keys.get(conn, "k1")
        k2 = await keys.get(conn, "k2")
        assert await keys.get(conn, "k3") is None
        assert await keys.get(conn, "' OR 1=1--") is None
        assert await environments.count_keys(conn) == 2
        assert [k.id for k in await keys.list_keys(conn)] == ["k1", "k2"]
        assert [k.id for k in await keys.list_keys(conn, b)] == ["k2"]
    assert k1 is not None and k2 is not None
    assert k1.secret_hash == h and k1.scopes == ("admin",) and k1.integration_ids is None and k1.revoked_at is None
    assert k2.environment_id == b and k2.integration_ids == ("acme", "beta")
    async with engine.begin() as conn:
        assert await keys.revoke(conn, "k1", NOW + 5) is True
        assert await keys.revoke(conn, "k1", NOW + 6) is False  # already revoked
        assert await keys.revoke(conn, "nope", NOW) is False
    async with reading(engine) as conn:
        k1 = await keys.get(conn, "k1")
    assert k1 is not None and k1.revoked_at == NOW + 5


# ------------------------------------------------------------------ integrations


async def test_integrations_upsert_get_list_delete(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with engine.begin() as conn:
        assert await integrations.upsert(conn, a, "acme", integration_values(), NOW) is True
        assert await integrations.upsert(conn, a, "beta", integration_values(client_id="c2"), NOW) is True
        assert await integrations.upsert(conn, b, "acme", integration_values(client_id="other-env"), NOW) is True
        assert await integrations.upsert(conn, a, "acme", integration_values(client_id="c1b"), NOW + 10) is False
    async with reading(engine) as conn:
        rec = await integrations.get(conn, a, "acme")
        assert rec is not None
        assert rec.client_id == "c1b" and rec.created_at == NOW and rec.updated_at == NOW + 10
        assert rec.scopes == ("read",) and rec.return_urls == ("https://app.example.com/done",)
        assert rec.endpoints == integration_values()["endpoints"]
        other = await integrations.get(conn, b, "acme")
        assert other is not None and other.client_id == "other-env"
        assert await integrations.get(conn, a, "nope") is None
        assert [r.id for r in await integrations.list_integrations(conn, a)] == ["acme", "beta"]
        assert [r.id for r in await integrations.list_integrations(conn, a, ("beta",))] == ["beta"]
        assert [r.id for r in await integrations.list_integrations(conn, b)] == ["acme"]
    async with engine.begin() as conn:
        assert await integrations.delete_integration(conn, a, "beta") is True
        assert await integrations.delete_integration(conn, a, "beta") is False
    async with reading(engine) as conn:
        assert await integrations.get(conn, a, "beta") is None
        assert await integrations.get(conn, b, "acme") is not None  # other environment untouched


async def test_integration_has_grants(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with engine.begin() as conn:
        await integrations.upsert(conn, a, "acme", integration_values(), NOW)
        assert await integrations.has_grants(conn, a, "acme") is False
    gid = await add_grant(engine, a)
    await add_grant(engine, b, integration_id="other")
    async with reading(engine) as conn:
        assert await integrations.has_grants(conn, a, "acme") is True
        assert await integrations.has_grants(conn, b, "acme") is False
    async with engine.begin() as conn:
        await grants.update_grant(conn, a, gid, {"status": "revoked"})
    async with reading(engine) as conn:
        assert await integrations.has_grants(conn, a, "acme") is False  # revoked grants do not block


# ------------------------------------------------------------------ grants


async def test_grants_insert_get_find(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    g1 = await add_grant(engine, a, provider_account_id="acct-1", updated_at=NOW + 1)
    g2 = await add_grant(engine, a, provider_account_id="acct-2", updated_at=NOW + 2)
    await add_grant(engine, a, user_id="user-2")
    gb = await add_grant(engine, b)
    async with reading(engine) as conn:
        rec = await grants.get(conn, a, g1)
        assert rec is not None and rec.refresh_token_ct == b"\x01refresh" and rec.has_refresh_token
        assert rec.scopes == ("read",) and rec.version == 1
        assert await grants.get(conn, b, g1) is None  # another environment's id
        assert await grants.get(conn, a, gb) is None
        assert await grants.get(conn, a, "not-a-uuid") is None
        assert (await grants.get_by_id_any_env(conn, gb)) is not None
        found = await grants.find_for_user(conn, a, "acme", "user-1")
        assert [g.id for g in found] == [g2, g1]  # newest first
        assert [g.id for g in await grants.find_for_user(conn, a, "acme", "user-1", "acct-1")] == [g1]
        assert await grants.find_for_user(conn, b, "acme", "user-2") == []
    # (environment, integration, user, account) is unique
    with pytest.raises(IntegrityError):
        await add_grant(engine, a, provider_account_id="acct-1")


async def test_grants_update_fenced_refuses_stale_version(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    gid = await add_grant(engine, a, version=4)
    async with engine.begin() as conn:
        assert await grants.update_fenced(conn, a, gid, 4, {"version": 5, "access_token_ct": b"\x01v5"}) is True
        # a second writer that read version 4 loses
        assert await grants.update_fenced(conn, a, gid, 4, {"version": 5, "access_token_ct": b"\x01stale"}) is False
        assert await grants.update_fenced(conn, b, gid, 5, {"version": 6}) is False  # wrong environment
        assert await grants.update_fenced(conn, a, gid, 5, {"version": 6}, require_status="invalid") is False
        assert await grants.update_fenced(conn, a, gid, 5, {"version": 6}, require_status="active") is True
    async with reading(engine) as conn:
        rec = await grants.get(conn, a, gid)
    assert rec is not None and rec.version == 6 and rec.access_token_ct == b"\x01v5"


async def test_lease_claim_renew_release(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    """refresh.lease: exclusive, re-entrant, owner-checked, on the database's clock."""
    a, b = envs
    gid = await add_grant(engine, a)
    async with engine.begin() as conn:
        assert await lease.claim(conn, a, gid, "p1", 30) is True
        assert await lease.claim(conn, a, gid, "p2", 30) is False  # exclusive
        assert await lease.claim(conn, a, gid, "p1", 30) is True  # re-entrant
        assert await lease.renew(conn, a, gid, "p2", 30, 1) is False  # not the owner
        assert await lease.claim(conn, b, gid, "p3", 30) is False  # other environment
        assert await lease.release(conn, a, gid, "p2") is False  # not the owner: no effect
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.lease_owner == "p1"
        # issue 12: a failure recorded by someone else never clears p1's lease
        assert await lease.fail(conn, a, gid, "p2", {"retry_at": NOW}, keep_lease=False) is False
        assert await lease.write_tokens(conn, a, gid, "p2", 1, {"access_token_ct": b"\x01x"}) is False
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.lease_owner == "p1" and rec.retry_at is None
        assert await lease.fail(conn, a, gid, "p1", {"retry_at": NOW}, keep_lease=True) is True
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.lease_owner == "p1" and rec.retry_at == NOW
        assert await lease.release(conn, a, gid, "p1") is True
        assert await lease.claim(conn, a, gid, "p2", 0.3) is True
    await asyncio.sleep(0.5)  # database time, whatever the application clocks say
    async with engine.begin() as conn:
        assert await lease.claim(conn, a, gid, "p3", 30) is True  # p2's lease expired
        # p2 comes back late: its lease is gone, its write must not land
        assert await lease.renew(conn, a, gid, "p2", 30, 1) is False
        assert await lease.write_tokens(conn, a, gid, "p2", 1, {"access_token_ct": b"\x01late"}) is False
        await grants.update_grant(conn, a, gid, {"status": "invalid"})
        assert await lease.claim(conn, a, gid, "p3", 30) is False  # only active grants
        # status is part of the fence: nothing is written into a grant no longer active
        assert await lease.write_tokens(conn, a, gid, "p3", 1, {"access_token_ct": b"\x01x"}) is False
    async with reading(engine) as conn:
        rec = await grants.get(conn, a, gid)
    assert rec is not None and rec.version == 1 and rec.access_token_ct == b"\x01access"


async def test_lease_renewal_is_refused_once_another_holder_stored_a_generation(
    engine: AsyncEngine, envs: tuple[str, str]
) -> None:
    """The chaos run under load: a worker's claim expired while it waited for a provider
    slot; another process took the lease, refreshed, stored generation 2 and let the lease
    go; the worker's renewal then re-took the free lease and presented the refresh token
    of generation 1, which the provider had already rotated (reuse: the grant died).
    A renewal is for the generation the holder read; after a newer one it is refused."""
    a, _ = envs
    gid = await add_grant(engine, a)
    async with engine.begin() as conn:
        assert await lease.claim(conn, a, gid, "worker", 0.3) is True
    await asyncio.sleep(0.5)  # the worker waits for a provider slot; its claim runs out
    async with engine.begin() as conn:
        assert await lease.claim(conn, a, gid, "api", 30) is True
        assert await lease.write_tokens(conn, a, gid, "api", 1, {"refresh_token_ct": b"\x01rt2"}) is True
    async with engine.begin() as conn:
        # the worker still holds generation 1's refresh token
        assert await lease.renew(conn, a, gid, "worker", 30, 1) is False
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.lease_owner is None and rec.version == 2
        assert await lease.renew(conn, a, gid, "worker", 30, 2) is True  # current generation


async def test_lease_write_tokens_bumps_the_generation_in_sql(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    gid = await add_grant(engine, a, version=4)
    async with engine.begin() as conn:
        assert await lease.claim(conn, a, gid, "p1", 30) is True
        assert await lease.write_tokens(conn, a, gid, "p1", 3, {"access_token_ct": b"\x01stale"}) is False
        assert await lease.write_tokens(conn, a, gid, "p1", 4, {"access_token_ct": b"\x01v5"}) is True
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.version == 5 and rec.lease_owner is None
        # a free lease is no obstacle (nobody else is at the provider)
        assert await lease.write_tokens(conn, a, gid, "p9", 5, {"access_token_ct": b"\x01v6"}) is True
        assert await lease.claim(conn, a, gid, "p1", 30) is True
        assert await lease.mark_invalid(conn, a, gid, "p2", 6, {"failure_code": "invalid_grant"}) is False
        assert await lease.mark_invalid(conn, a, gid, "p1", 5, {"failure_code": "invalid_grant"}) is False
        assert await lease.mark_invalid(conn, a, gid, "p1", 6, {"failure_code": "invalid_grant"}) is True
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.status == "invalid" and rec.version == 6 and rec.lease_owner is None
        assert await grants.mark_revoked(conn, a, gid, NOW) is True
        rec = await grants.get(conn, a, gid)
        assert rec is not None and rec.status == "revoked" and rec.version == 7
        assert rec.refresh_token_ct is None and rec.access_token_ct is None


async def test_lease_claim_is_exclusive_across_connections(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    gid = await add_grant(engine, a)

    async def claim(owner: str) -> bool:
        async with engine.begin() as conn:
            return await lease.claim(conn, a, gid, owner, 30)

    results = await asyncio.gather(*(claim(f"p{i}") for i in range(8)))
    assert sum(results) == 1


async def test_grants_claim_due(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    due = [await add_grant(engine, a, user_id=f"due-{i}", refresh_due_at=NOW - 100 + i) for i in range(3)]
    due.append(await add_grant(engine, b, user_id="due-b", refresh_due_at=NOW - 1))
    await add_grant(engine, a, user_id="later", refresh_due_at=NOW + 100)
    await add_grant(engine, a, user_id="never", refresh_due_at=None)
    await add_grant(engine, a, user_id="invalid", refresh_due_at=NOW - 100, status="invalid")
    await add_grant(engine, a, user_id="backoff", refresh_due_at=NOW - 100, retry_at=NOW + 50)
    await add_grant(engine, a, user_id="leased", refresh_due_at=NOW - 100, lease_owner="x", lease_until=time.time() + 60)
    async with engine.begin() as conn:
        claimed = await lease.claim_due(conn, "w1", NOW, 1.0, 2)
    assert [c[1] for c in claimed] == due[:2]  # oldest due first, limited
    assert all(c[2] == 1 and c[3] == "oauth2" for c in claimed)
    async with engine.begin() as conn:
        rest = await lease.claim_due(conn, "w2", NOW, 1.0, 100)
    assert sorted(c[1] for c in rest) == sorted(due[2:])  # every environment; never twice
    async with engine.begin() as conn:
        assert await lease.claim_due(conn, "w3", NOW + 1, 30, 100) == []
        rec = await grants.get(conn, a, due[0])
        assert rec is not None and rec.lease_owner == "w1"
    await asyncio.sleep(1.2)
    async with engine.begin() as conn:
        # once the lease runs out (database time) the grant is due again
        again = await lease.claim_due(conn, "w3", NOW + 31, 30, 100)
    assert {c[1] for c in again} >= set(due[:2])
    async with reading(engine) as conn:
        assert await grants.oldest_due(conn) == NOW - 100


async def test_grants_claim_due_concurrent_claimers_are_disjoint(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    ids = {await add_grant(engine, a, user_id=f"u{i}", refresh_due_at=NOW - i) for i in range(24)}

    async def claimer(owner: str) -> list[str]:
        async with engine.begin() as conn:
            got = await lease.claim_due(conn, owner, NOW, 30, 5)
            await asyncio.sleep(0.05)  # hold the transaction (and row locks) open a little
            return [g[1] for g in got]

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(6)))
    flat = [g for r in results for g in r]
    assert len(flat) == len(set(flat)) == 24
    assert set(flat) == ids


async def test_grants_claim_due_skip_locked(engine: AsyncEngine, envs: tuple[str, str], backend: str) -> None:
    """PostgreSQL: a claimer skips the rows another open transaction holds, instead of waiting."""
    if backend != "postgres":
        pytest.skip("SQLite serialises writers at BEGIN instead (covered by the concurrent test)")
    a, _ = envs
    ids = {await add_grant(engine, a, user_id=f"u{i}", refresh_due_at=NOW - i) for i in range(6)}
    async with engine.connect() as c1, engine.connect() as c2:
        await c1.begin()
        first = await lease.claim_due(c1, "w1", NOW, 30, 3)
        await c2.begin()
        second = await asyncio.wait_for(lease.claim_due(c2, "w2", NOW, 30, 10), timeout=5)
        await c2.commit()
        await c1.commit()
    assert len(first) == 3 and len(second) == 3
    assert {g[1] for g in first} | {g[1] for g in second} == ids
    assert not {g[1] for g in first} & {g[1] for g in second}


async def test_grants_list_pagination_and_filters(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    made = []
    for i in range(25):
        made.append(
            await add_grant(
                engine,
                a,
                user_id=f"user-{i % 3}",
                provider_account_id=f"acct-{i}",
                integration_id="acme" if i % 2 else "beta",
                status="invalid" if i % 5 == 0 else "active",
                created_at=NOW + i,
            )
        )
    await add_grant(engine, b, user_id="user-0")
    newest_first = list(reversed(made))
    async with reading(engine) as conn:
        page1, more1 = await grants.list_grants(conn, a, limit=10)
        page3, more3 = await grants.list_grants(conn, a, limit=10, offset=20)
        beyond, more_beyond = await grants.list_grants(conn, a, limit=10, offset=1000)
        exact, more_exact = await grants.list_grants(conn, a, limit=25)
        assert [g.id for g in page1] == newest_first[:10] and more1
        assert [g.id for g in page3] == newest_first[20:] and not more3
        assert beyond == [] and not more_beyond
        assert len(exact) == 25 and not more_exact
        by_user, _ = await grants.list_grants(conn, a, user_id="user-1", limit=200)
        assert {g.user_id for g in by_user} == {"user-1"} and len(by_user) == 8
        by_int, _ = await grants.list_grants(conn, a, integration_id="acme", limit=200)
        assert {g.integration_id for g in by_int} == {"acme"} and len(by_int) == 12
        limited, _ = await grants.list_grants(conn, a, integration_ids=["beta"], limit=200)
        assert {g.integration_id for g in limited} == {"beta"} and len(limited) == 13
        none, _ = await grants.list_grants(conn, a, integration_ids=[], limit=200)
        assert none == []
        invalid, _ = await grants.list_grants(conn, a, status="invalid", limit=200)
        assert len(invalid) == 5
        combo, _ = await grants.list_grants(conn, a, user_id="user-0", status="invalid", integration_id="beta", limit=200)
        assert {(g.user_id, g.status, g.integration_id) for g in combo} == {("user-0", "invalid", "beta")}
        literal, _ = await grants.list_grants(conn, a, user_id="' OR 1=1--", limit=200)
        assert literal == []
        assert await grants.count_by_status(conn, a) == {"active": 20, "invalid": 5}
        assert await grants.count_by_status(conn, b) == {"active": 1}
        assert await grants.count_all_by_status(conn) == {"active": 21, "invalid": 5}


# ------------------------------------------------------------------ connect sessions


async def test_connect_sessions_claim_by_state_single_use_and_expiry(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    s1 = session_values(a)
    s2 = session_values(a, expires_at=NOW + 10)
    s3 = session_values(a, status="pending")
    async with engine.begin() as conn:
        for s in (s1, s2, s3):
            await connect.insert_session(conn, s)
    async with reading(engine) as conn:
        got = await connect.get(conn, a, s1["id"])
        assert got is not None and got.status == "authorizing" and got.verifier_ct == b"\x01verifier"
        assert await connect.get(conn, b, s1["id"]) is None
        by_token = await connect.by_url_token(conn, s1["url_token_hash"])
        assert by_token is not None and by_token.id == s1["id"]
        assert await connect.by_url_token(conn, b"\x00" * 32) is None
    async with engine.begin() as conn:
        claimed = await connect.claim_by_state(conn, s1["state_hash"], NOW + 1)
        assert claimed is not None and claimed.id == s1["id"] and claimed.status == "exchanging"
        assert await connect.claim_by_state(conn, s1["state_hash"], NOW + 2) is None  # single use
        assert await connect.claim_by_state(conn, s2["state_hash"], NOW + 10) is None  # expired
        assert await connect.claim_by_state(conn, s3["state_hash"], NOW + 1) is None  # not yet authorizing
        assert await connect.claim_by_state(conn, b"\x00" * 32, NOW) is None
        assert await connect.update_session(conn, s1["id"], {"status": "completed"}, expect_status="authorizing") is False
        assert await connect.update_session(conn, s1["id"], {"status": "completed"}, expect_status="exchanging") is True


async def test_connect_claim_by_state_concurrent_single_winner(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    s = session_values(a)
    async with engine.begin() as conn:
        await connect.insert_session(conn, s)

    async def claim() -> bool:
        async with engine.begin() as conn:
            return await connect.claim_by_state(conn, s["state_hash"], NOW + 1) is not None

    assert sum(await asyncio.gather(*(claim() for _ in range(8)))) == 1


async def test_connect_claim_export_once(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    s1 = session_values(a, status="completed", export_ct=b"\x01tokens", export_status="available", export_expires_at=NOW + 600)
    s2 = session_values(a, status="completed", export_ct=b"\x01tokens", export_status="available", export_expires_at=NOW + 5)
    async with engine.begin() as conn:
        await connect.insert_session(conn, s1)
        await connect.insert_session(conn, s2)
    async with engine.begin() as conn:
        assert await connect.claim_export(conn, s1["id"], NOW + 1) is True
        assert await connect.claim_export(conn, s1["id"], NOW + 2) is False
        assert await connect.claim_export(conn, s2["id"], NOW + 5) is False  # expired
        rec = await connect.get(conn, a, s1["id"])
        assert rec is not None and rec.export_ct is None and rec.export_status == "retrieved"


# ------------------------------------------------------------------ audit


async def test_audit_append_and_list(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    g = str(uuid.uuid4())
    async with engine.begin() as conn:
        for i in range(7):
            await audit.append(
                conn,
                environment_id=a,
                actor="key:k1",
                action=f"grant.token_issued.{i}",
                now=NOW + i,
                grant_id=g if i % 2 else None,
                integration_id="acme",
                detail={"n": i},
            )
        await audit.append(conn, environment_id=b, actor="key:k2", action="other", now=NOW)
    async with reading(engine) as conn:
        rows, more = await audit.list_events(conn, a, limit=5)
        assert more and [r["detail"]["n"] for r in rows] == [6, 5, 4, 3, 2]  # newest first
        rows2, more2 = await audit.list_events(conn, a, limit=5, offset=5)
        assert not more2 and [r["detail"]["n"] for r in rows2] == [1, 0]
        by_grant, _ = await audit.list_events(conn, a, grant_id=g)
        assert [r["detail"]["n"] for r in by_grant] == [5, 3, 1]
        assert all(r["actor"] == "key:k1" and r["environment_id"] == a for r in by_grant)
        after, _ = await audit.list_events(conn, a, after_id=rows[-1]["id"])
        assert [r["detail"]["n"] for r in after] == [3, 4, 5, 6]  # oldest first after a cursor
        other, _ = await audit.list_events(conn, b)
        assert [r["action"] for r in other] == ["other"]


# ------------------------------------------------------------------ webhooks


async def test_webhooks_enqueue_fan_out_claim_and_record(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with engine.begin() as conn:
        e_all = await add_endpoint(conn, a, ["*"])
        e_created = await add_endpoint(conn, a, ["grant.created"])
        e_invalid = await add_endpoint(conn, a, ["grant.invalid"])
        e_other_env = await add_endpoint(conn, b, ["*"])
        assert (await webhooks.get_endpoint(conn, a, e_all)) is not None
        assert await webhooks.get_endpoint(conn, b, e_all) is None  # another environment's id
        assert [e["id"] for e in await webhooks.list_endpoints(conn, a)] == [e_all, e_created, e_invalid]
        n = await webhooks.enqueue(
            conn, event_id="evt_1", environment_id=a, event_type="grant.created", grant_id=None, payload={"type": "grant.created"}, now=NOW
        )
        assert n == 2
        assert await webhooks.enqueue(
            conn, event_id="evt_2", environment_id=a, event_type="grant.updated", grant_id=None, payload={}, now=NOW
        ) == 1
    async with engine.begin() as conn:
        claimed = await webhooks.claim_deliveries(conn, NOW, NOW + 30, 100)
    assert sorted((c["event_id"], c["endpoint_id"]) for c in claimed) == sorted(
        [("evt_1", e_all), ("evt_1", e_created), ("evt_2", e_all)]
    )
    assert all(c["url"] == "https://hooks.example.com/x" and c["secret_ct"] == b"\x01whsec" for c in claimed)
    assert not any(c["endpoint_id"] in (e_invalid, e_other_env) for c in claimed)
    async with engine.begin() as conn:
        assert await webhooks.claim_deliveries(conn, NOW + 1, NOW + 31, 100) == []  # leased
        first = claimed[0]
        await webhooks.record_attempt(
            conn, first["id"], status="succeeded", attempts=1, next_attempt_at=None, last_status=204, last_error=None, delivered_at=NOW + 1
        )
        second = claimed[1]
        await webhooks.record_attempt(
            conn, second["id"], status="pending", attempts=1, next_attempt_at=NOW + 60, last_status=503, last_error="HTTP 503", delivered_at=None
        )
    async with engine.begin() as conn:
        # the third one's lease ran out: claimable again; the retried one waits for its backoff
        again = await webhooks.claim_deliveries(conn, NOW + 31, NOW + 61, 100)
        assert [c["id"] for c in again] == [claimed[2]["id"]]
        later = await webhooks.claim_deliveries(conn, NOW + 62, NOW + 92, 100)
        assert sorted(c["id"] for c in later) == sorted([second["id"], claimed[2]["id"]])
        listed = await webhooks.list_deliveries(conn, a)
        assert {d["status"] for d in listed} == {"succeeded", "pending"}
        assert await webhooks.list_deliveries(conn, b) == []


async def test_webhooks_delete_endpoint_stops_deliveries(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with engine.begin() as conn:
        ep = await add_endpoint(conn, a, ["*"])
        await webhooks.enqueue(conn, event_id="evt_d", environment_id=a, event_type="grant.deleted", grant_id=None, payload={}, now=NOW)
        assert await webhooks.delete_endpoint(conn, b, ep, NOW) is False  # another environment
        assert await webhooks.delete_endpoint(conn, a, ep, NOW) is True
        assert await webhooks.delete_endpoint(conn, a, ep, NOW) is False
        assert await webhooks.get_endpoint(conn, a, ep) is None
        assert await webhooks.claim_deliveries(conn, NOW + 1, NOW + 31, 100) == []
        # new events do not fan out to it any more
        assert await webhooks.enqueue(conn, event_id="evt_e", environment_id=a, event_type="grant.deleted", grant_id=None, payload={}, now=NOW) == 0


# ------------------------------------------------------------------ the caller owns the transaction


async def test_store_functions_never_commit(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, _ = envs
    async with engine.begin() as conn:
        await integrations.upsert(conn, a, "keep", integration_values(), NOW)
    kept = await add_grant(engine, a, user_id="kept")
    async with engine.connect() as conn:
        await conn.begin()
        await environments.create(conn, "rolled-back", NOW)
        await keys.insert_key(
            conn, key_id="kx", environment_id=a, name="x", secret_hash=b"\x00" * 32, scopes=["admin"], integration_ids=None, now=NOW
        )
        await keys.revoke(conn, "kx", NOW)
        await integrations.upsert(conn, a, "acme", integration_values(), NOW)
        await integrations.upsert(conn, a, "keep", integration_values(client_id="changed"), NOW)
        await integrations.delete_integration(conn, a, "keep")
        await grants.insert_grant(conn, grant_values(a))
        await grants.update_fenced(conn, a, kept, 1, {"version": 2})
        await lease.claim(conn, a, kept, "p", 30)
        await connect.insert_session(conn, session_values(a))
        await audit.append(conn, environment_id=a, actor="x", action="y", now=NOW)
        ep = await add_endpoint(conn, a, ["*"])
        await webhooks.enqueue(conn, event_id="evt_r", environment_id=a, event_type="grant.created", grant_id=None, payload={}, now=NOW)
        await webhooks.delete_endpoint(conn, a, ep, NOW)
        await conn.rollback()
    async with reading(engine) as conn:
        assert await environments.by_name(conn, "rolled-back") is None
        assert await keys.get(conn, "kx") is None
        assert await integrations.get(conn, a, "acme") is None
        keep = await integrations.get(conn, a, "keep")
        assert keep is not None and keep.client_id == "client-1"
        rec = await grants.get(conn, a, kept)
        assert rec is not None and rec.version == 1 and rec.lease_owner is None
        for table in (t.grants, t.connect_sessions, t.audit_events, t.webhook_endpoints, t.webhook_events, t.webhook_deliveries):
            n = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            assert n == (1 if table is t.grants else 0), table.name
