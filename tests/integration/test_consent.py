"""Smart consent: a second provider account still gets a refresh token."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
from tests.support.flows import connect_grant, setup_oidc_integration, start_connect
from tests.support.gk import Server
from tests.support.oidc import OidcServer


def test_second_provider_account_of_the_same_user_gets_a_refresh_token(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    first = connect_grant(gk, oidc, "acme", "user-2acc", account="alice")
    # a new connect (not a reconnect of a grant) may end at any account: ask for consent
    s = start_connect(gk, "acme", "user-2acc")
    r = httpx.get(s["connect_url"], follow_redirects=False)
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}
    assert q.get("prompt") == "consent", q
    second = connect_grant(gk, oidc, "acme", "user-2acc", account="bob")
    assert second != first
    with gk.client() as c:
        g1, g2 = c.get(f"/v1/grants/{first}").json(), c.get(f"/v1/grants/{second}").json()
        assert g1["provider_account_id"] != g2["provider_account_id"]
        assert g1["has_refresh_token"] is True
        assert g2["has_refresh_token"] is True, g2
        # and the second account's grant really refreshes
        r2 = c.post(f"/v1/grants/{second}/token", json={"force_refresh": True})
        assert r2.status_code == 200, r2.text
