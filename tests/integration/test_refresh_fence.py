"""The refresh fence and the failure classes (issue 12), against the real oidc-provider.

A refresh held back at the provider (``hold`` fault: processed, answer withheld) while
something else changes the grant: the late answer must never land in a grant that is
no longer ``active``, must never turn into a 500, and tokens minted for a deleted
grant are revoked at the provider.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc


@pytest.fixture
def quiet_gk(backend: str, tmp_path: Path) -> Iterator[Server]:
    with running_server(backend, tmp_path, worker=False) as server:
        yield server


def _in_background(server: Server, gid: str, body: dict[str, object]) -> tuple[threading.Thread, list[httpx.Response]]:
    out: list[httpx.Response] = []

    def call() -> None:
        with server.client(timeout=60) as c:
            out.append(c.post(f"/v1/grants/{gid}/token", json=body))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t, out


def _wait_held(oidc: OidcServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if oidc.http.get("/__control/state").json()["held"] >= 1:
            return
        time.sleep(0.05)
    raise AssertionError("the refresh never reached the provider")


def test_delete_during_refresh_answers_409_and_revokes_the_late_tokens(quiet_gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", "u-del-race")
    oidc.faults(token=[{"mode": "hold"}])
    t, out = _in_background(quiet_gk, gid, {"force_refresh": True})
    _wait_held(oidc)
    revocations = oidc.stats()["revocation"]
    with quiet_gk.client() as c:
        d = c.delete(f"/v1/grants/{gid}")
        assert d.status_code == 200 and d.json()["status"] == "revoked"
    oidc.release()
    t.join(30)
    r = out[0]
    assert r.status_code == 409 and r.json()["code"] == "grant_revoked", r.text
    with quiet_gk.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "revoked" and g["has_refresh_token"] is False
    # DELETE's own revocation plus the revocation of what the late answer minted
    deadline = time.monotonic() + 10
    while oidc.stats()["revocation"] < revocations + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert oidc.stats()["revocation"] == revocations + 2
    assert oidc.stats()["revocation_requests"][-1]["token_type_hint"] == "refresh_token"


def test_late_success_never_lands_in_an_invalid_grant(quiet_gk: Server, oidc: OidcServer) -> None:
    """A refresh held at the provider while the grant is marked invalid elsewhere (another
    process, a provider revocation notice): the late answer is not written into it."""
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", "u-late")
    with quiet_gk.client() as c:
        before = c.get(f"/v1/grants/{gid}").json()
    oidc.faults(token=[{"mode": "hold"}])
    t, out = _in_background(quiet_gk, gid, {"force_refresh": True})
    _wait_held(oidc)
    # the grant turns invalid while the answer is held back (as a provider event or an
    # operator would do it): written straight into the database, status only
    _set_status(quiet_gk, gid, "invalid")
    oidc.release()
    t.join(30)
    r = out[0]
    assert r.status_code == 409 and r.json()["code"] == "grant_invalid", r.text
    with quiet_gk.client() as c:
        after = c.get(f"/v1/grants/{gid}").json()
    assert after["status"] == "invalid"
    assert after["last_refreshed_at"] == before["last_refreshed_at"], "nothing written into it"


def _set_status(server: Server, gid: str, status: str) -> None:
    import asyncio

    from sqlalchemy import update

    from grantkeeper.config import Settings
    from grantkeeper.store.db import create_engine
    from grantkeeper.store.tables import grants

    settings = Settings(
        database_url=server.env["GRANTKEEPER_DATABASE_URL"],
        master_keys=server.env["GRANTKEEPER_MASTER_KEYS"],  # type: ignore[arg-type]
    )

    async def go() -> None:
        engine = create_engine(settings)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(grants)
                    .where(grants.c.id == gid)
                    .values(status=status, failure_code="revoked_at_provider", failed_at=time.time())
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client"])
def test_client_refused_is_the_integrations_problem(quiet_gk: Server, oidc: OidcServer, error: str) -> None:
    oidc.set_ttl(AccessToken=2)
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", f"u-{error}")
    time.sleep(2.5)
    oidc.set_ttl(AccessToken=120)
    status = 401 if error == "invalid_client" else 400
    oidc.fault_policy(token={"mode": "status", "status": status, "error": error})
    with quiet_gk.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={})
        assert r.status_code == 424 and r.json()["code"] == "integration_misconfigured", r.text
        retry_after = int(r.headers["retry-after"])
        assert 1 <= retry_after <= 30, "the first retry within 30 seconds"
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "active" and g["failure"] is None, "the grant is not dead"
        integ = c.get("/v1/integrations/acme").json()
        assert integ["status"] == "failing" and integ["failure"]["code"] == error
        # backing off: neither an immediate retry nor a forced refresh calls the provider
        calls = oidc.stats()["token"]["total"]
        again = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        # the same answer as the first call for as long as the integration backs off (a 503
        # provider_unavailable here sent operators looking at the provider, not their client)
        assert again.status_code == 424 and again.json()["code"] == "integration_misconfigured", again.text
        assert 1 <= int(again.headers["retry-after"]) <= retry_after
        assert oidc.stats()["token"]["total"] == calls
        # the provider accepts the client again: back to ok by itself
        oidc.fault_policy(token=None)
        time.sleep(retry_after + 0.5)
        ok = c.post(f"/v1/grants/{gid}/token", json={})
        assert ok.status_code == 200, ok.text
        assert c.get("/v1/integrations/acme").json()["status"] == "ok"
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"


def test_proxy_401_retry_respects_the_backoff(quiet_gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", "u-proxy-backoff")
    oidc.faults(token=[{"mode": "status", "status": 503, "retry_after": 30}])
    with quiet_gk.client() as c:
        # the provider fails: the grant backs off (its access token is still valid)
        r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert r.status_code in (200, 503)  # 503 since issue 12: a forced refresh is not the old token
        calls = oidc.stats()["token"]["total"]
        p = c.get(f"/v1/proxy/{gid}/status/401")
        assert p.status_code == 401, p.text  # the API's answer, passed through
        assert oidc.stats()["token"]["total"] == calls, "no refresh while backing off"
        forced = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert forced.status_code == 503 and forced.json()["code"] == "provider_unavailable"
        assert oidc.stats()["token"]["total"] == calls
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
