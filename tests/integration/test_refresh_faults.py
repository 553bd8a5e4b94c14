"""Provider answers that arrive split, cut short, late or never (issue 12), against the
real oidc-provider (rotation on every use, reuse detection on: presenting a spent
refresh token revokes the whole grant, so a dropped rotated token shows at once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.flows import connect, connect_grant, setup_oidc_integration
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc

SPLIT = {"mode": "split", "chunk": 7, "pause_ms": 15}


@pytest.fixture
def quiet_gk(backend: str, tmp_path: Path) -> Iterator[Server]:
    """API only: every refresh below is caused by the test."""
    with running_server(backend, tmp_path, worker=False) as server:
        yield server


def _refreshes(oidc: OidcServer) -> int:
    return int(oidc.stats()["token"]["refresh_token"])


def test_split_refresh_answer_is_read_whole(quiet_gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", "u-split")
    oidc.faults(token=[SPLIT])
    with quiet_gk.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert r.status_code == 200, r.text
        # the rotated refresh token was kept: the next refresh presents it, not the spent one
        again = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert again.status_code == 200, again.text
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
    assert oidc.stats()["faults"]["token"] == {"split": 1}


def test_split_answers_at_connect(quiet_gk: Server, oidc: OidcServer) -> None:
    """Code exchange, discovery, JWKS and userinfo answers in small pieces."""
    setup_oidc_integration(quiet_gk, oidc)
    oidc.faults(
        token=[SPLIT],
        discovery=[SPLIT] * 3,
        jwks=[SPLIT] * 3,
        userinfo=[SPLIT] * 3,
    )
    outcome = connect(quiet_gk, oidc, "acme", "u-split-connect")
    assert outcome.query.get("status") == "success", outcome.query
    gid = outcome.query["grant_id"]
    with quiet_gk.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["status"] == "active" and g["has_refresh_token"]
        assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200


def test_truncated_2xx_refresh_is_outcome_unknown(quiet_gk: Server, oidc: OidcServer) -> None:
    """A 2xx that cannot be read whole: never a clean transient failure. The lease is kept,
    it is counted, and the same refresh token is presented again at once (providers with a
    reuse grace window accept it; oidc-provider has none, so here the grant dies cleanly)."""
    setup_oidc_integration(quiet_gk, oidc)
    gid = connect_grant(quiet_gk, oidc, "acme", "u-trunc")
    before = _refreshes(oidc)
    oidc.faults(token=[{"mode": "truncate", "bytes": 30}])
    with quiet_gk.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert r.status_code in (409, 503), r.text
        assert _refreshes(oidc) - before == 2, "retried at once with the same refresh token"
        metrics = c.get("/metrics").text
    assert 'outcome="unknown"' in metrics
    time.sleep(0.1)
