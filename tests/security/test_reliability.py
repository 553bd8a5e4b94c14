"""Refresh reliability (SECURITY.md section 3) beyond tests/integration/test_refresh.py:
R5 against a token endpoint that omits ``refresh_token``, adversarial case 30 at full size."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.security.fake_as import FakeAS
from tests.support.burst import parallel_posts
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import Server
from tests.support.oidc import OidcServer


def test_refresh_without_refresh_token_keeps_the_old_one(gk: Server, fake_as: FakeAS) -> None:
    """R5 (RFC 6749 6): a refresh answer without refresh_token keeps the stored one, so the
    next refresh presents the original refresh token again."""
    with gk.client() as c:
        assert c.put("/v1/integrations/fake", json=fake_as.integration()).status_code in (200, 201)
        r = c.post(
            "/v1/grants",
            json={"integration_id": "fake", "user_id": "u-r5", "refresh_token": "rt-original-77", "verify": True},
        )
        assert r.status_code == 201, r.text
        gid = r.json()["id"]
        assert r.json()["has_refresh_token"] is True
        for _ in range(2):
            t = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
            assert t.status_code == 200, t.text
        g = c.get(f"/v1/grants/{gid}").json()
    refreshes = [q for q in fake_as.requests if q.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 3  # verify on import + two forced refreshes
    assert {q["refresh_token"] for q in refreshes} == {"rt-original-77"}
    assert g["status"] == "active" and g["has_refresh_token"] is True


@pytest.mark.oidc
@pytest.mark.slow
def test_thousand_parallel_token_requests_one_refresh(gk: Server, oidc: OidcServer) -> None:
    """Adversarial 30: 1,000 parallel token requests for one expired grant -> one refresh."""
    oidc.set_ttl(AccessToken=2)
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "u-1000")
    time.sleep(2.5)
    oidc.set_ttl(AccessToken=300)
    before = int(oidc.stats()["token"]["refresh_token"])

    # all 1,000 started together over 200 connections (the client: see tests/support/burst.py)
    results = asyncio.run(parallel_posts(f"{gk.base_url}/v1/grants/{gid}/token", gk.admin_key, {"min_ttl": 30}, 1000, connections=200, timeout=120))
    assert len(results) == 1000
    codes = {r.status_code for r in results}
    assert codes == {200}, {(r.status_code, r.text[:100]) for r in results if r.status_code != 200}
    assert len({r.json()["access_token"] for r in results}) == 1
    assert int(oidc.stats()["token"]["refresh_token"]) - before == 1
    with gk.client() as c:
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"
