"""DELETE during a provider outage: the grant is revoked at once, and the refresh token is
revoked at the provider later by the worker (a durable outbox), not given up after seconds
(C12; issue 12 review item 7)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import running_server
from tests.support.oidc import OidcServer
from tests.support.sqlexec import sql_rows


def test_revocation_survives_a_provider_outage(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    with running_server(backend, tmp_path, GRANTKEEPER_REVOCATION_RETRY_BASE="0.3") as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "user-outage")
        before = oidc.stats()["revocation"]
        outage = 5
        oidc.faults(revocation=[{"mode": "status", "status": 503}] * outage)
        with gk.client() as c:
            t = time.monotonic()
            r = c.delete(f"/v1/grants/{gid}")
            took = time.monotonic() - t
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "revoked" and body["provider_revocation"] == "failed"
            assert body.get("revocation_pending") is True
            assert took < 3.0, took  # the request does not sit out the outage
            # revoked at once: no token is served
            assert c.get(f"/v1/grants/{gid}").json()["status"] == "revoked"
            assert c.post(f"/v1/grants/{gid}/token", json={}).status_code == 409
        # the worker keeps trying until the provider answers 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and oidc.stats()["revocation"] < before + outage + 1:
            time.sleep(0.3)
        stats = oidc.stats()
        assert stats["revocation"] == before + outage + 1, stats["revocation"]
        assert stats["revocation_requests"][-1]["token_type_hint"] == "refresh_token"
        # nothing secret is left behind once it is done, and nothing more is sent
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = sql_rows(gk.db, "SELECT count(*) FROM revocation_outbox WHERE token_ct IS NOT NULL")
            if left[0][0] == 0:
                break
            time.sleep(0.2)
        assert left[0][0] == 0
        (grant,) = sql_rows(gk.db, "SELECT refresh_token_ct, access_token_ct FROM grants WHERE id = ?", gid)
        assert grant == (None, None)
        time.sleep(1.5)
        assert oidc.stats()["revocation"] == before + outage + 1


def test_second_delete_reports_the_current_revocation_outcome(backend: str, tmp_path: Path, oidc: OidcServer) -> None:
    """A DELETE repeated after the outbox reached the provider says so ("succeeded"), not
    what the first DELETE saw during the outage; while it is still pending it says that."""
    with running_server(backend, tmp_path, GRANTKEEPER_REVOCATION_RETRY_BASE="0.3") as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "user-again")
        before = oidc.stats()["revocation"]
        outage = 4
        # the DELETE's own attempts, and the worker's first one, meet the outage
        oidc.faults(revocation=[{"mode": "status", "status": 503}] * outage)
        with gk.client() as c:
            first = c.delete(f"/v1/grants/{gid}").json()
            assert first["provider_revocation"] == "failed" and first.get("revocation_pending") is True
            again = c.delete(f"/v1/grants/{gid}").json()
            if oidc.stats()["revocation"] < before + outage + 1:
                assert again["provider_revocation"] == "failed" and again.get("revocation_pending") is True, again
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                (row,) = sql_rows(gk.db, "SELECT status FROM revocation_outbox WHERE grant_id = ?", gid)
                if row[0] != "pending":
                    break
                time.sleep(0.3)
            assert row[0] == "succeeded", row
            later = c.delete(f"/v1/grants/{gid}")
            assert later.status_code == 200, later.text
            body = later.json()
            assert body["already_revoked"] is True
            assert body["provider_revocation"] == "succeeded", body
            assert "revocation_pending" not in body
