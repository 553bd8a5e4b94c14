"""Token freshness against the real oidc-provider (rotation on every use, reuse detection on).

SECURITY.md R1-R6, C14; issue 4's "Done when" list.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from tests.support.burst import Answer, parallel_posts
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import (
    Server,
    WebhookSink,
    free_port,
    require_postgres,
    running_server,
    start_server,
)
from tests.support.oidc import OidcServer

from grantkeeper.clock import parse_iso

pytestmark = pytest.mark.oidc


def refreshes(oidc: OidcServer) -> int:
    return int(oidc.stats()["token"]["refresh_token"])


@pytest.fixture
def quiet_gk(backend: str, tmp_path: Path) -> Iterator[Server]:
    """API only: no proactive worker, so every refresh below is caused by the test."""
    with running_server(backend, tmp_path, worker=False) as server:
        yield server


def expired_grant(server: Server, oidc: OidcServer, user: str, ttl: int = 2) -> str:
    oidc.set_ttl(AccessToken=ttl)
    setup_oidc_integration(server, oidc)
    gid = connect_grant(server, oidc, "acme", user)
    time.sleep(ttl + 0.5)
    # tokens issued from now on live long enough that one refresh serves the whole burst
    oidc.set_ttl(AccessToken=120)
    return gid


async def _burst(base: str, key: str, gid: str, n: int) -> list[Answer]:
    # min_ttl below the new token's lifetime: one refresh serves the whole burst (the v2
    # min_ttl refreshes whenever the token lives less, and the test budget is 0 s)
    return await parallel_posts(f"{base}/v1/grants/{gid}/token", key, {"min_ttl": 30}, n)


def test_concurrent_requests_on_expired_grant_refresh_once(quiet_gk: Server, oidc: OidcServer) -> None:
    gid = expired_grant(quiet_gk, oidc, "u-burst")
    before = refreshes(oidc)
    results = asyncio.run(_burst(quiet_gk.base_url, quiet_gk.admin_key, gid, 200))
    assert all(r.status_code == 200 for r in results), {r.status_code for r in results}
    assert len({r.json()["access_token"] for r in results}) == 1
    assert refreshes(oidc) - before == 1
    with quiet_gk.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "active"
        # the stored (rotated) refresh token still works: the grant is alive at the provider
        assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200


def test_four_processes_on_postgres_refresh_once(tmp_path: Path, oidc: OidcServer) -> None:
    require_postgres()
    with running_server("postgres", tmp_path, worker=False) as first:
        others: list[Server] = []

        def another() -> None:
            port = free_port()
            env = dict(first.env, GRANTKEEPER_PUBLIC_URL=first.env["GRANTKEEPER_PUBLIC_URL"])
            others.append(start_server(env, port, tmp_path / f"p{port}.log", first.db, worker=False, admin_key=first.admin_key))

        try:
            # the three others start side by side (each start is mostly a Python process
            # importing; one after another they took half of this test)
            starting = [threading.Thread(target=another) for _ in range(3)]
            for t in starting:
                t.start()
            for t in starting:
                t.join()
            assert len(others) == 3, "a server did not start (see the exception above)"
            gid = expired_grant(first, oidc, "u-multi")
            before = refreshes(oidc)

            async def all_at_once() -> list[Answer]:
                servers = [first, *others]
                chunks = await asyncio.gather(*(_burst(s.base_url, first.admin_key, gid, 50) for s in servers))
                return [r for chunk in chunks for r in chunk]

            results = asyncio.run(all_at_once())
            assert all(r.status_code == 200 for r in results), {(r.status_code, r.text[:80]) for r in results}
            assert len({r.json()["access_token"] for r in results}) == 1
            assert refreshes(oidc) - before == 1
            with first.client() as c:
                assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
        finally:
            for s in others:
                s.stop()


def test_transient_503_keeps_grant_and_backs_off(quiet_gk: Server, oidc: OidcServer) -> None:
    gid = expired_grant(quiet_gk, oidc, "u-503")
    oidc.faults(token=[{"mode": "status", "status": 503, "retry_after": 2}])
    with quiet_gk.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={})
        assert r.status_code == 503 and r.json()["code"] == "provider_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        # backing off: an immediate retry does not call the provider again
        calls = oidc.stats()["token"]["total"]
        r2 = c.post(f"/v1/grants/{gid}/token", json={})
        assert r2.status_code == 503
        assert oidc.stats()["token"]["total"] == calls
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "active" and g["failure"] is None
        time.sleep(int(r.headers["retry-after"]) + 0.5)
        ok = c.post(f"/v1/grants/{gid}/token", json={})
        assert ok.status_code == 200, ok.text


def test_still_valid_token_is_served_when_provider_is_down(quiet_gk: Server, oidc: OidcServer) -> None:
    oidc.set_ttl(AccessToken=60)
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", "u-down")
    oidc.faults(token=[{"mode": "status", "status": 500}])
    with quiet_gk.client() as c:
        current = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0}).json()["access_token"]
        r = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 3600})  # asks for more than the provider gives
        assert r.status_code == 200
        assert r.json()["access_token"] == current


def test_lost_response_outcome(quiet_gk: Server, oidc: OidcServer, webhook_sink: WebhookSink) -> None:
    """The provider rotated but the answer never arrived.

    Documented outcome: the vault reports a transient failure and keeps the grant
    active (backing off: even a forced refresh waits for it); the next refresh presents
    the only refresh token it ever received, which a reuse-detecting provider refuses
    (and revokes the family): the grant becomes invalid with exactly one grant.invalid
    event. The vault itself never discards a token it received.
    """
    with quiet_gk.client() as c:
        c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.invalid"]})
    gid = expired_grant(quiet_gk, oidc, "u-lost")
    oidc.faults(token=[{"mode": "drop_after"}])
    with quiet_gk.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={})
        assert r.status_code == 503
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
        backing_off = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert backing_off.status_code == 503 and backing_off.json()["code"] == "provider_unavailable"
        time.sleep(int(backing_off.headers["retry-after"]) + 0.2)
        r2 = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert r2.status_code == 409 and r2.json()["code"] == "grant_invalid"
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "invalid"


def test_revocation_at_provider_marks_invalid_once(gk: Server, oidc: OidcServer, webhook_sink: WebhookSink) -> None:
    with gk.client() as c:
        ep = c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.invalid", "grant.created"]}).json()
    oidc.set_ttl(AccessToken=60)
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "u-rev")
    oidc.revoke_account_grants("alice")
    with gk.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert r.status_code == 409
        body = r.json()
        assert body["code"] == "grant_invalid" and body["failure"]["code"] == "invalid_grant"
        calls = oidc.stats()["token"]["total"]
        for _ in range(5):
            assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 409
        assert oidc.stats()["token"]["total"] == calls, "no provider call for an invalid grant"
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "invalid" and g["failure"]["code"] == "invalid_grant"
    hooks = webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.invalid")
    time.sleep(1.0)
    hooks = [w for w in webhook_sink.received if w.json()["type"] == "grant.invalid"]
    assert len(hooks) == 1
    w = hooks[0]
    payload = Webhook(ep["secret"]).verify(w.body, w.headers)
    assert payload["data"]["grant"]["id"] == gid and payload["data"]["grant"]["status"] == "invalid"
    grant_keys = set(payload["data"]["grant"])
    assert not grant_keys & {"access_token", "refresh_token", "id_token"}
    # tampered body or old timestamp fail verification
    with pytest.raises(WebhookVerificationError):
        Webhook(ep["secret"]).verify(w.body.replace(b"invalid", b"active"), w.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(ep["secret"]).verify(w.body, {**w.headers, "webhook-timestamp": str(int(time.time()) - 3600)})


def test_reconnect_recovers_invalid_grant(gk: Server, oidc: OidcServer, webhook_sink: WebhookSink) -> None:
    with gk.client() as c:
        c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["grant.recovered"]})
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "u-recover", account="bob")
    oidc.revoke_account_grants("bob")
    with gk.client() as c:
        assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 409
    assert connect_grant(gk, oidc, "acme", "u-recover", account="bob") == gid
    with gk.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "active" and g["failure"] is None
        assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200
    webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.recovered")


def test_worker_refreshes_before_expiry(gk: Server, oidc: OidcServer) -> None:
    oidc.set_ttl(AccessToken=4)
    setup_oidc_integration(gk, oidc)
    gids = [connect_grant(gk, oidc, "acme", f"u-pro-{i}") for i in range(3)]
    with gk.client() as c:
        first = {g: c.get(f"/v1/grants/{g}").json()["access_token_expires_at"] for g in gids}
        time.sleep(6)
        for g in gids:
            now = c.get(f"/v1/grants/{g}").json()
            assert now["status"] == "active"
            assert now["access_token_expires_at"] > first[g], "the worker refreshed ahead of expiry"
        # callers do not wait: the token is fresh already. Longer tokens from here on, so the
        # worker's own next refresh of these 4-second tokens cannot land inside the check.
        oidc.set_ttl(AccessToken=300)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            exp = [c.get(f"/v1/grants/{g}").json()["access_token_expires_at"] for g in gids]
            if all(parse_iso(e) > time.time() + 200 for e in exp):
                break
            time.sleep(0.3)
        before = refreshes(oidc)
        for g in gids:
            assert c.post(f"/v1/grants/{g}/token", json={"min_ttl": 0}).status_code == 200
        assert refreshes(oidc) == before


def test_two_workers_never_refresh_the_same_grant_twice(tmp_path: Path, oidc: OidcServer) -> None:
    require_postgres()
    oidc.set_ttl(AccessToken=3)
    with running_server("postgres", tmp_path) as first:
        port = free_port()
        second = start_server(dict(first.env), port, tmp_path / "w2.log", first.db, admin_key=first.admin_key)
        try:
            setup_oidc_integration(first, oidc)
            gids = [connect_grant(first, oidc, "acme", f"u-two-{i}") for i in range(8)]
            time.sleep(9)  # several refresh cycles for every grant
            with first.client() as c:
                statuses = [c.get(f"/v1/grants/{g}").json()["status"] for g in gids]
                assert statuses == ["active"] * len(gids), "a double refresh would have killed a grant"
                # Quiesce before counting: both workers keep refreshing the 3-second tokens, so a
                # refresh could land between reading the audit trail and reading the provider's
                # count. Long tokens from here on; once every grant holds one, nothing is due.
                oidc.set_ttl(AccessToken=300)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    exp = [c.get(f"/v1/grants/{g}").json()["access_token_expires_at"] for g in gids]
                    if all(parse_iso(e) > time.time() + 200 for e in exp):
                        break
                    time.sleep(0.3)
                else:
                    raise AssertionError("the workers did not settle on the long tokens")
                # the tokens and their audit row commit together, so the trail is complete now
                refreshed = 0
                for g in gids:
                    events = c.get("/v1/audit-events", params={"grant_id": g, "limit": 200}).json()
                    assert events["next_offset"] is None
                    mine = [e for e in events["data"] if e["action"] == "grant.refreshed"]
                    assert mine, f"grant {g} was never refreshed"
                    refreshed += len(mine)
                assert [c.get(f"/v1/grants/{g}").json()["status"] for g in gids] == ["active"] * len(gids)
            assert refreshes(oidc) == refreshed, "every refresh the provider saw is one audited refresh"
        finally:
            second.stop()


def test_kill_mid_refresh_leaves_no_stuck_grant(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    with running_server(backend, tmp_path, worker=False, GRANTKEEPER_REFRESH_LEASE_SECONDS="6") as gk:
        gid = expired_grant(gk, oidc, "u-kill")
        oidc.faults(token=[{"mode": "delay", "ms": 4000}])
        done = threading.Event()

        def call() -> None:
            try:
                httpx.post(f"{gk.base_url}/v1/grants/{gid}/token", headers={"Authorization": f"Bearer {gk.admin_key}"}, json={}, timeout=10)
            except httpx.HTTPError:
                pass
            done.set()

        threading.Thread(target=call, daemon=True).start()
        time.sleep(1.5)  # the refresh is at the provider now
        os.kill(gk.proc.pid, signal.SIGKILL)
        gk.proc.wait()
        restarted = start_server(gk.env, int(gk.base_url.rsplit(":", 1)[1]), gk.log_path, gk.db, worker=False, admin_key=gk.admin_key)
        try:
            t0 = time.monotonic()
            with restarted.client() as c:
                r = c.post(f"/v1/grants/{gid}/token", json={})
                # the dead process's lease expires; the provider consumed the refresh token whose
                # answer nobody received, so it refuses the old one: invalid, never stuck or looping
                assert r.status_code in (200, 409), r.text
                assert time.monotonic() - t0 < 20
                status = c.get(f"/v1/grants/{gid}").json()["status"]
                assert status in ("active", "invalid")
        finally:
            restarted.stop()


def test_refresh_budget_limits_refreshes_unless_forced(tmp_path: Path, oidc: OidcServer) -> None:
    with running_server("sqlite", tmp_path, worker=False, GRANTKEEPER_REFRESH_MIN_INTERVAL="30") as gk:
        oidc.set_ttl(AccessToken=8)
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "u-budget")
        time.sleep(4.5)  # under 3.5 s left: less than half the lifetime, still valid
        before = refreshes(oidc)
        with gk.client() as c:
            assert c.post(f"/v1/grants/{gid}/token", json={}).status_code == 200
            assert refreshes(oidc) == before, "refreshed moments ago: served as is"
            assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200
            assert refreshes(oidc) == before + 1
