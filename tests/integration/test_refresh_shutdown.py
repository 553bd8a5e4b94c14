"""Graceful shutdown (issue 12, v2 "Durability and operations"): SIGTERM while the
provider holds back a refresh answer it has already processed (rotated). The process
waits for the answer, persists it, then exits; after a restart the grant is still
active and refreshes fine at oidc-provider (rotation and reuse detection on)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import Server, free_port, running_server, start_server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc

HOLD_MS = 3000


def _wait_held(oidc: OidcServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if oidc.stats()["faults"].get("token", {}).get("hold", 0) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError("no refresh reached the provider")


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> float:
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=30)
    return time.monotonic() - t0


def _assert_alive_after_restart(gk: Server, gid: str) -> None:
    port = int(gk.base_url.rsplit(":", 1)[1])
    restarted = start_server(gk.env, port, gk.log_path, gk.db, worker=False, admin_key=gk.admin_key)
    try:
        with restarted.client() as c:
            g = c.get(f"/v1/grants/{gid}").json()
            assert g["status"] == "active", g
            # the refresh token stored is the rotated one: presenting it works
            r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
            assert r.status_code == 200, r.text
            assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
    finally:
        restarted.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_serve_drains_a_held_proactive_refresh(
    backend: str, tmp_path: Path, oidc: OidcServer, sig: signal.Signals
) -> None:
    with running_server(backend, tmp_path) as gk:  # API + worker
        setup_oidc_integration(gk, oidc)
        oidc.set_ttl(AccessToken=8)
        gid = connect_grant(gk, oidc, "acme", "u-drain")
        # the worker's proactive refresh (due mid-life) is processed, its answer held back
        oidc.faults(token=[{"mode": "hold", "ms": HOLD_MS}])
        oidc.set_ttl(AccessToken=60)
        _wait_held(oidc)
        took = _stop(gk.proc, sig)
        assert took >= HOLD_MS / 1000 - 1.0, "it waited for the answer instead of dropping it"
        assert took < 12, "within the shutdown timeout (10 s)"
        _assert_alive_after_restart(gk, gid)


def test_worker_drains_a_held_refresh(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    with running_server(backend, tmp_path, worker=False) as gk:
        setup_oidc_integration(gk, oidc)
        oidc.set_ttl(AccessToken=8)
        gid = connect_grant(gk, oidc, "acme", "u-drain-worker")
        oidc.faults(token=[{"mode": "hold", "ms": HOLD_MS}])
        oidc.set_ttl(AccessToken=60)
        log = open(tmp_path / "worker.log", "ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "grantkeeper.cli", "worker"],
            env=gk.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            _wait_held(oidc)
            took = _stop(worker, signal.SIGTERM)
        finally:
            if worker.poll() is None:
                worker.kill()
            log.close()
        assert took >= HOLD_MS / 1000 - 1.0
        assert took < 12
        assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]
        _assert_alive_after_restart(gk, gid)


def test_shutdown_timeout_bounds_the_wait(tmp_path: Path, oidc: OidcServer) -> None:
    """An answer that never comes: the process still exits within the configured time, and
    the lease stays (the outcome is unknown) instead of letting another process reuse it."""
    with running_server(
        "sqlite",
        tmp_path,
        GRANTKEEPER_SHUTDOWN_TIMEOUT="2",
        GRANTKEEPER_HTTP_TIMEOUT="20",
        GRANTKEEPER_REFRESH_LEASE_SECONDS="30",
    ) as gk:
        setup_oidc_integration(gk, oidc)
        oidc.set_ttl(AccessToken=8)
        connect_grant(gk, oidc, "acme", "u-drain-bound")
        oidc.faults(token=[{"mode": "hold"}])
        _wait_held(oidc)
        took = _stop(gk.proc, signal.SIGTERM)
        oidc.release()
        assert took < 5, took


_ = free_port


def test_a_token_call_outliving_the_shutdown_answers_503_not_500(
    tmp_path: Path, oidc: OidcServer
) -> None:
    """A token call waiting for a refresh that is still at the provider when the shutdown
    time is up gets a clean 503 ``provider_unavailable`` (retry elsewhere), not uvicorn's
    bare 500 (seen in the chaos run: SIGTERM of an API process during held answers)."""
    import threading

    with running_server(
        "sqlite",
        tmp_path,
        worker=False,
        GRANTKEEPER_SHUTDOWN_TIMEOUT="2",
        GRANTKEEPER_HTTP_TIMEOUT="20",
        GRANTKEEPER_REFRESH_LEASE_SECONDS="30",
    ) as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "u-drain-caller")
        oidc.faults(token=[{"mode": "hold"}])
        answer: dict[str, object] = {}

        def call() -> None:
            with gk.client() as c:
                r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}, timeout=30)
                answer.update(
                    status=r.status_code,
                    ctype=r.headers.get("content-type"),
                    text=r.text,
                    retry=r.headers.get("retry-after"),
                )

        caller = threading.Thread(target=call)
        caller.start()
        try:
            _wait_held(oidc)
            took = _stop(gk.proc, signal.SIGTERM)
            caller.join(timeout=10)
        finally:
            oidc.release()
        assert took < 5, took
        assert answer.get("status") == 503, answer
        assert answer["ctype"] == "application/problem+json"
        assert '"code":"provider_unavailable"' in str(answer["text"]).replace(" ", ""), answer
        assert answer["retry"] is not None
        assert "Exception in ASGI application" not in gk.log_path.read_text()
