"""Slow refresh answers (issue 12, found by the chaos harness), against the real oidc-provider.

The provider has rotated the refresh token before it sends its answer, and it revokes
the whole grant when the old one is presented again (no grace window). So once a 2xx
answer is on its way the vault must read it to the end, however slowly it trickles in,
and nobody may present the old refresh token meanwhile:

* the body of a 2xx token answer is read as long as it keeps arriving (the HTTP timeout
  bounds silence, not the whole answer): a total deadline cut a slowly split answer,
  the same refresh token was presented again and the grant died;
* the refresh lease is renewed while the call is in flight: a lease that expired during
  a long answer let another process present the old refresh token (reuse, grant dead).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import free_port, running_server, start_server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc

# the HTTP timeout is 1 s: every answer below takes several seconds to arrive whole
SLOW = {"GRANTKEEPER_HTTP_TIMEOUT": "1", "GRANTKEEPER_REFRESH_LEASE_SECONDS": "2"}


def _stats(oidc: OidcServer) -> tuple[int, int]:
    s = oidc.stats()
    return int(s["token"]["refresh_token"]), int(s["refresh_reuse"])


def test_answer_trickling_past_the_timeout_is_read_whole(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    with running_server(backend, tmp_path, worker=False, **SLOW) as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "u-trickle")
        before, reuse_before = _stats(oidc)
        # about 140 pieces 40 ms apart: some 5 s for the whole answer, never 1 s of silence
        oidc.faults(token=[{"mode": "split", "chunk": 8, "pause_ms": 40}])
        with gk.client(timeout=60) as c:
            r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
            assert r.status_code == 200, r.text
            assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
            # the rotated refresh token was kept: the next refresh works too
            r2 = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
            assert r2.status_code == 200, r2.text
        after, reuse_after = _stats(oidc)
        assert reuse_after == reuse_before, "a spent refresh token was presented again"
        assert after - before == 2


def test_lease_outlives_a_long_answer(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    """A second process asks for the grant while the first one's answer is still arriving
    (after the first lease term ran out): it waits for that answer instead of presenting
    the refresh token the provider has already rotated."""
    with running_server(backend, tmp_path, worker=False, **SLOW) as first:
        port = free_port()
        second = start_server(dict(first.env), port, tmp_path / f"p{port}.log", first.db, worker=False, admin_key=first.admin_key)
        try:
            setup_oidc_integration(first, oidc)
            gid = connect_grant(first, oidc, "acme", "u-long")
            before, reuse_before = _stats(oidc)
            # some 14 s for the whole answer: longer than the lease term (about 9 s here)
            oidc.faults(token=[{"mode": "split", "chunk": 4, "pause_ms": 50}])
            out: list[httpx.Response] = []

            def slow_call() -> None:
                with first.client(timeout=90) as c:
                    out.append(c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}))

            t = threading.Thread(target=slow_call, daemon=True)
            t.start()
            time.sleep(11)  # past the first lease term, the answer still arriving
            with second.client(timeout=90) as c:
                r2 = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
            t.join(90)
            assert out and out[0].status_code == 200, out and out[0].text
            assert r2.status_code == 200, r2.text
            _, reuse_after = _stats(oidc)
            assert reuse_after == reuse_before, "the other process presented the rotated refresh token"
            with first.client() as c:
                assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
                assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200
        finally:
            second.stop()
