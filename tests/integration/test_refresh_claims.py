"""A proactive claim never outlives its lease at the provider (issue 12), against the real
oidc-provider (rotation and reuse detection on: a refresh token presented twice revokes the
whole grant there), on SQLite and PostgreSQL.

The full chaos run found refresh tokens presented twice 0.6-0.9 s apart: a grant claimed by
one worker waited for a provider slot until its claim's lease had run out, another process
took the grant and presented its refresh token, and then the first worker presented the same
one. Here the moment the lease runs out is chosen, not waited for: while the claimed grant
waits for the provider host's only slot (held by another owner in the database), the lease
is moved into the past in database time (which is all a lease is), so no test step depends
on how fast the machine is.

Two vault processes in one event loop: a worker pipeline (``run_proactive``) and a second
runtime whose on-demand refresh (``engine.refresh``) is the second claimer. The last test
holds the worker's group commit back after the provider answered, for longer than a lease
term: the heartbeat must keep the grant from every other claimer, the worker's own next
claims included.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import update
from tests.support.gk import Database, master_key
from tests.support.oidc import OidcServer, pkce_pair

from grantkeeper.bootstrap import ensure_environment
from grantkeeper.config import Settings
from grantkeeper.grants import open_token, save_connected
from grantkeeper.inputs import IntegrationInput
from grantkeeper.integrations import put_integration, resolve
from grantkeeper.oauth.tokens import token_request
from grantkeeper.providers.quirks import apply_token_response
from grantkeeper.refresh import engine, lease, proactive, slots
from grantkeeper.runtime import Runtime, open_runtime
from grantkeeper.store import grants as grant_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord
from grantkeeper.store.tables import grants

pytestmark = [pytest.mark.oidc, pytest.mark.anyio]

REDIRECT_URI = "http://127.0.0.1:9/cb"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Vault:
    """Two processes of the vault on one database, and the grant they share."""

    worker: Runtime
    api: Runtime
    grant: GrantRecord
    token_host: str


async def _open(database: Database, keys: str, **settings: Any) -> Runtime:
    return await open_runtime(
        Settings(
            database_url=database.url,
            master_keys=keys,  # type: ignore[arg-type]
            allow_private_networks=True,
            http_timeout=1.0,
            worker_interval=0.05,
            # one slot per provider host, so a test can hold it
            worker_provider_concurrency=1,
            **settings,
        )
    )


@pytest.fixture
async def vault(
    database: Database, oidc: OidcServer, request: pytest.FixtureRequest
) -> AsyncIterator[Vault]:
    # long-lived access tokens: the grant is due only when a test says so
    oidc.set_ttl(AccessToken=3600)
    keys = master_key()
    lease_seconds = getattr(request, "param", 30.0)
    worker = await _open(database, keys, refresh_lease_seconds=lease_seconds)
    api = await _open(database, keys, refresh_lease_seconds=30.0)
    try:
        env = await ensure_environment(worker.engine, "default")
        client_id, secret = oidc.register_client([REDIRECT_URI])
        body = IntegrationInput(
            provider="oidc",
            issuer=oidc.issuer,
            client_id=client_id,
            client_secret=secret,
            scopes=["openid", "offline_access", "api:read"],
            return_urls=["http://127.0.0.1:9/app"],
        )
        async with worker.engine.begin() as conn:
            integ, _ = await put_integration(conn, worker, env, "acme", body)
        res = await resolve(worker, integ)
        # the user's authorization at the provider, redeemed with the integration's client
        verifier, challenge = pkce_pair()
        url = oidc.authorization_url(client_id, REDIRECT_URI, code_challenge=challenge)
        outcome = await asyncio.to_thread(oidc.authorize, url)
        assert outcome.code, outcome.responses
        tokens = await token_request(
            worker.http,
            res.token_url,
            res.client,
            {
                "grant_type": "authorization_code",
                "code": outcome.code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            timeout=5.0,
            normalise=lambda b: apply_token_response(res.spec, b),
        )
        assert tokens.refresh_token
        async with worker.engine.begin() as conn:
            rec, _ = await save_connected(
                conn,
                worker,
                res.spec,
                environment_id=env,
                integration_id="acme",
                user_id="u-" + secrets.token_hex(4),
                provider_account_id="alice",
                tokens=tokens,
                requested_scopes=None,
                id_token_exp=None,
                actor="test",
                via="connect",
            )
        yield Vault(worker, api, rec, urlsplit(res.token_url).netloc)
    finally:
        await worker.close()
        await api.close()


async def _set(rt: Runtime, gid: str, **values: Any) -> None:
    async with rt.engine.begin() as conn:
        await conn.execute(update(grants).where(grants.c.id == gid).values(**values))


async def _get(rt: Runtime, gid: str) -> GrantRecord:
    async with reading(rt.engine) as conn:
        rec = await grant_store.get_by_id_any_env(conn, gid)
    assert rec is not None
    return rec


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def _refresh_tags(oidc: OidcServer) -> list[str]:
    """Short tags (hashes) of every refresh token presented, in order."""
    return [e["rt"] for e in oidc.stats()["token_log"] if e["grant_type"] == "refresh_token"]


async def _held(oidc: OidcServer) -> bool:
    return int(oidc.http.get("/__control/state").json()["held"]) >= 1


async def _assert_alive(v: Vault, oidc: OidcServer, version: int) -> None:
    """No refresh token was presented twice; the grant is active at the expected generation,
    and the refresh token it holds still works at the provider (after a reuse the provider
    revokes the grant, and this refresh would be refused)."""
    tags = _refresh_tags(oidc)
    assert oidc.stats()["refresh_reuse"] == 0 and len(tags) == len(set(tags)), tags
    rec = await _get(v.api, v.grant.id)
    assert (rec.status, rec.version, rec.lease_owner) == ("active", version, None)
    fresh = await engine.refresh(
        v.api, rec.environment_id, rec.id, seen_version=None, trigger="test"
    )
    assert fresh.status == "active" and fresh.version == version + 1
    assert open_token(v.api.vault, fresh, "refresh_token") != open_token(
        v.api.vault, rec, "refresh_token"
    )
    assert oidc.stats()["refresh_reuse"] == 0


@pytest.mark.parametrize("other", ["at_the_provider", "done"])
async def test_a_claim_that_ran_out_waiting_for_a_slot_is_never_presented(
    vault: Vault, oidc: OidcServer, other: str
) -> None:
    """The worker claims the grant and waits for the provider's only slot; meanwhile its
    lease runs out and the API process refreshes the grant (its answer still held back at
    the provider, or already stored). When the slot comes free the worker must give the
    grant up, not present the refresh token the other process spent."""
    v = vault
    gid = v.grant.id
    async with v.worker.engine.begin() as conn:
        assert await slots.acquire(conn, v.token_host, "someone-else", 1, 1, 120) == [0]
    await _set(v.worker, gid, refresh_due_at=time.time() - 1)
    stop = asyncio.Event()
    pipeline = asyncio.ensure_future(proactive.run_proactive(v.worker, stop))
    owner = f"{v.worker.instance_id}:proactive"
    try:

        async def claimed() -> bool:
            return (await _get(v.worker, gid)).lease_owner == owner

        await _until("the worker claimed the grant", claimed)
        # the claim's lease runs out (database time) while the grant waits for the slot
        await _set(v.worker, gid, lease_until=0.0)
        if other == "at_the_provider":
            oidc.faults(token=[{"mode": "hold"}])  # processed (rotated), answer held back
        second = asyncio.ensure_future(
            engine.refresh(
                v.api,
                v.grant.environment_id,
                gid,
                seen_version=v.grant.version,
                trigger="on_demand",
            )
        )
        if other == "at_the_provider":
            await _until("the API process's refresh reached the provider", lambda: _held(oidc))
        else:
            assert (await second).version == v.grant.version + 1
        async with v.worker.engine.begin() as conn:
            await slots.release(conn, v.token_host, "someone-else", [0])

        async def worker_done() -> bool:
            return f"proactive:{gid}" not in v.worker.inflight

        await _until("the worker finished with the grant", worker_done)
        if other == "at_the_provider":
            oidc.release()
            assert (await second).version == v.grant.version + 1
    finally:
        stop.set()
        await pipeline
    await _assert_alive(v, oidc, v.grant.version + 1)


@pytest.mark.parametrize("vault", [3.5], indirect=True, ids=["lease-3.5s"])
async def test_a_slow_batched_write_keeps_the_lease(
    vault: Vault, oidc: OidcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider answered (the refresh token is spent) but the group commit is slow: the
    grant stays leased to the worker, renewed past its lease term, until the new generation
    is stored; no other claimer, worker or API process, gets it meanwhile."""
    v = vault
    gid = v.grant.id
    # a short lease: lease_budget = max(GRANTKEEPER_REFRESH_LEASE_SECONDS, the time the
    # call and every persist retry need), so the retries are made short too
    monkeypatch.setattr(engine, "PERSIST_DELAYS", (0.05,))
    budget = engine.lease_budget(v.worker)
    assert budget == 3.5
    entered, gate = asyncio.Event(), asyncio.Event()
    flush = proactive._Writer._flush

    async def slow_flush(self: Any, batch: Any) -> Any:
        entered.set()
        await gate.wait()
        return await flush(self, batch)

    monkeypatch.setattr(proactive._Writer, "_flush", slow_flush)
    await _set(v.worker, gid, refresh_due_at=time.time() - 1)
    stop = asyncio.Event()
    pipeline = asyncio.ensure_future(proactive.run_proactive(v.worker, stop))
    try:
        await asyncio.wait_for(entered.wait(), 15)
        presented = _refresh_tags(oidc)
        assert len(presented) == 1  # presented, answered: the write is pending
        await asyncio.sleep(budget + 1.0)
        # nobody presented it again meanwhile, this worker's next claims included
        assert _refresh_tags(oidc) == presented and oidc.stats()["refresh_reuse"] == 0
        async with v.api.engine.begin() as conn:
            # another worker's claim of due grants, and the on-demand path's claim
            taken = await lease.claim_due_records(conn, "another-worker", time.time(), 30, 10)
            assert [r.id for r in taken] == []
            assert await lease.claim(conn, v.grant.environment_id, gid, "api-process", 30) is False
        rec = await _get(v.api, gid)
        owner = f"{v.worker.instance_id}:proactive"
        assert (rec.status, rec.version, rec.lease_owner) == ("active", v.grant.version, owner)
        gate.set()

        async def stored() -> bool:
            return (await _get(v.api, gid)).version == v.grant.version + 1

        await _until("the batched write committed", stored)
    finally:
        gate.set()
        stop.set()
        await pipeline
    await _assert_alive(v, oidc, v.grant.version + 1)


def _count_renewals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The grant ids of every batched lease renewal the pipeline sends (before the call or
    from the keeper)."""
    renewed: list[str] = []
    flush = proactive._Renewer._flush

    async def counting(self: Any, batch: list[GrantRecord]) -> Any:
        renewed.extend(r.id for r in batch)
        return await flush(self, batch)

    monkeypatch.setattr(proactive._Renewer, "_flush", counting)
    return renewed


async def _refreshed_by_the_worker(v: Vault, version: int) -> None:
    """Make the grant due and wait until the worker stored ``version``."""
    await _set(v.worker, v.grant.id, refresh_due_at=time.time() - 1)

    async def stored() -> bool:
        rec = await _get(v.api, v.grant.id)
        return rec.version == version and rec.lease_owner is None

    await _until(f"the worker stored generation {version}", stored)


async def test_a_young_claim_with_a_free_slot_goes_to_the_provider_without_a_renewal(
    vault: Vault, oidc: OidcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker holds a free slot of the provider host (from its first refresh) and claims
    the grant again: its claim is seconds old, so its lease cannot have run out and the
    renewal round trip is skipped; nothing is presented twice."""
    v = vault
    renewed = _count_renewals(monkeypatch)
    stop = asyncio.Event()
    pipeline = asyncio.ensure_future(proactive.run_proactive(v.worker, stop))
    try:
        # no slot held yet: the grant waits for the slot's acquisition, so it renews
        await _refreshed_by_the_worker(v, v.grant.version + 1)
        assert renewed == [v.grant.id]
        await _refreshed_by_the_worker(v, v.grant.version + 2)
        assert renewed == [v.grant.id]  # the second claim went straight to the provider
    finally:
        stop.set()
        await pipeline
    await _assert_alive(v, oidc, v.grant.version + 2)


async def test_an_old_claim_renews_even_with_a_free_slot(
    vault: Vault, oidc: OidcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot is free, but the claim is older than the window (the clock moved on between
    the claim and the call), its lease ran out, and the API process refreshed the grant
    meanwhile: the worker renews, fenced on the generation, and gives the grant up."""
    v = vault
    gid = v.grant.id
    renewed = _count_renewals(monkeypatch)
    offset = [0.0]
    real = time.monotonic

    class _Clock:
        @staticmethod
        def monotonic() -> float:
            return real() + offset[0]

    monkeypatch.setattr(proactive, "time", _Clock)
    armed, hooked = asyncio.Event(), asyncio.Event()
    read = proactive._Pipeline.integrations

    async def then_time_passes(self: Any, recs: list[GrantRecord]) -> Any:
        out = await read(self, recs)
        if armed.is_set() and any(r.id == gid for r in recs):
            armed.clear()
            offset[0] += 1000.0  # the claim is now long past the window
            await _set(v.worker, gid, lease_until=0.0)  # and its lease ran out
            other = await engine.refresh(
                v.api, v.grant.environment_id, gid, seen_version=v.grant.version + 1, trigger="on_demand"
            )
            assert other.version == v.grant.version + 2
            hooked.set()
        return out

    monkeypatch.setattr(proactive._Pipeline, "integrations", then_time_passes)
    stop = asyncio.Event()
    pipeline = asyncio.ensure_future(proactive.run_proactive(v.worker, stop))
    try:
        await _refreshed_by_the_worker(v, v.grant.version + 1)  # the worker now holds a slot
        armed.set()
        await _set(v.worker, gid, refresh_due_at=time.time() - 1)
        await asyncio.wait_for(hooked.wait(), 15)

        async def worker_done() -> bool:
            return f"proactive:{gid}" not in v.worker.inflight

        await _until("the worker finished with the grant", worker_done)
        assert renewed.count(gid) == 2  # the first claim's, and the old claim's (refused)
    finally:
        stop.set()
        await pipeline
    await _assert_alive(v, oidc, v.grant.version + 2)


async def test_an_unexpected_error_in_a_batched_write_never_leaves_the_refresh_hanging(
    vault: Vault, oidc: OidcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch statement that fails with something other than a database error (a bug, a
    value the driver refuses) must not stop the group commit: its waiters take the engine's
    persist path, and the next batches are written as usual."""
    v = vault
    flush = proactive._Writer._flush
    failed: list[int] = []

    async def broken_once(self: Any, batch: Any) -> Any:
        if not failed:
            failed.append(len(batch))
            raise RuntimeError("unexpected")
        return await flush(self, batch)

    monkeypatch.setattr(proactive._Writer, "_flush", broken_once)
    stop = asyncio.Event()
    pipeline = asyncio.ensure_future(proactive.run_proactive(v.worker, stop))
    try:
        await _refreshed_by_the_worker(v, v.grant.version + 1)  # through the engine's persist
        assert failed == [1]
        await _refreshed_by_the_worker(v, v.grant.version + 2)  # the writer still writes
    finally:
        stop.set()
        await asyncio.wait_for(pipeline, 30)
    await _assert_alive(v, oidc, v.grant.version + 2)
