"""Connect callbacks that fail after the code was redeemed never leave a session pending
forever, and two connects of the same account at once end with one grant."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlsplit

import httpx
from tests.support.flows import setup_oidc_integration, start_connect
from tests.support.gk import Server
from tests.support.oidc import OidcServer, authorize


def _callback_url(oidc: OidcServer, connect_url: str) -> str:
    """Walk the provider's side for one user and stop before grantkeeper's callback."""
    outcome = authorize(connect_url, follow_origins=[oidc.origin])
    assert outcome.final_url is not None and "/oauth/callback" in outcome.final_url, outcome.responses
    return outcome.final_url


def test_concurrent_connects_of_one_account_end_with_one_grant(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    oidc.set_account("alice")
    sessions = [start_connect(gk, "acme", "user-twice") for _ in range(4)]
    callbacks = [_callback_url(oidc, s["connect_url"]) for s in sessions]
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(len(callbacks))

    def hit(url: str) -> None:
        barrier.wait()
        answers.append(httpx.get(url, follow_redirects=False, timeout=60))

    threads = [threading.Thread(target=hit, args=(u,)) for u in callbacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [302] * len(callbacks), [(r.status_code, r.text[:200]) for r in answers]
    statuses = [parse_qs(urlsplit(r.headers["location"]).query)["status"][0] for r in answers]
    assert statuses == ["success"] * len(callbacks), [r.headers["location"] for r in answers]
    with gk.client() as c:
        grants = c.get("/v1/grants", params={"user_id": "user-twice"}).json()["data"]
        assert len(grants) == 1 and grants[0]["has_refresh_token"], grants
        for s in sessions:
            view = c.get(f"/v1/connect/sessions/{s['id']}").json()
            assert view["status"] == "completed" and view["grant_id"] == grants[0]["id"], view
        # the grant works
        assert c.post(f"/v1/grants/{grants[0]['id']}/token", json={"force_refresh": True}).status_code == 200
