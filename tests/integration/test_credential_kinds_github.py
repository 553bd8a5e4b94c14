"""``github_app`` grants end to end on SQLite and PostgreSQL against a local GitHub-App-like
server (``tests.support.tokenapi``) that verifies the app JWT with the app's public key.

The installation flow goes through the connect URL: the vault sends the user to the app's
installation page with a single-use ``state``; "GitHub" (the test) sends the user back to
the callback (``/oauth/callback``) with ``installation_id``, that ``state`` and, because the
app requests user authorization during installation, a ``code``. The vault redeems the code
for a user-to-server token and accepts the installation only if ``GET /user/installations``
lists it: an ``installation_id`` is a number anyone can put on the URL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey
from tests.integration.test_credential_kinds import (
    assert_nowhere,
    create_grant,
    post,
    put_integration,
)
from tests.support.gk import Server, require_postgres, running_server
from tests.support.tokenapi import TokenApi

APP_ID = "314159"
APP_CLIENT_ID = "Iv1.8a61f9b3a7aba766"
APP_CLIENT_SECRET = "gh-app-client-secret-0123456789"
RETURN = "http://127.0.0.1:9/app/done"


@pytest.fixture(params=["sqlite", "postgres"])
def gk_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path) as server:
        yield server


def github_app(server: Server, api: TokenApi) -> str:
    key = RSAKey.generate_key(2048, private=True)
    pem = key.as_pem(private=True).decode()
    api.apps[APP_ID] = RSAKey.import_key(key.as_pem(private=False))
    api.installations.update({"777", "778"})
    api.oauth_clients[APP_CLIENT_ID] = APP_CLIENT_SECRET
    api.user_installations.update({"alice": {"778"}, "mallory": {"777"}})
    integ = put_integration(
        server,
        "gh",
        {
            "provider": "github-app-installation",
            "app_id": APP_ID,
            "private_key": pem,
            "client_id": APP_CLIENT_ID,
            "client_secret": APP_CLIENT_SECRET,
            "settings": {"app_slug": "acme-bot"},
            "api_base_url": api.base_url,
            "endpoints": {
                "authorization_url": api.base_url + "/apps/acme-bot/installations/new",
                "token_url": api.base_url + "/login/oauth/access_token",
            },
            "return_urls": [RETURN],
        },
    )
    assert integ["private_key_set"] is True and integ["app_id"] == APP_ID
    assert "PRIVATE" not in str(integ)
    return pem


def pem_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_github_app_grant_by_api(gk_api: Server, token_api: TokenApi) -> None:
    pem = github_app(gk_api, token_api)
    bad = create_grant(gk_api, "gh", "org-1", {"installation_id": "999"})
    assert bad.status_code == 422 and bad.json()["code"] == "credentials_rejected", bad.text
    r = create_grant(gk_api, "gh", "org-1", {"installation_id": "777"})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["provider_account_id"] == "777" and grant["has_refresh_token"] is False
    gid = grant["id"]
    tok = post(gk_api, f"/v1/grants/{gid}/token")
    assert tok.status_code == 200, tok.text
    token = tok.json()["access_token"]
    assert token.startswith("ghs_") and tok.json()["expires_in"] > 3000
    with gk_api.client() as c:
        who = c.get(f"/v1/proxy/{gid}/api/repos/acme/widgets")
    assert who.status_code == 200 and who.json()["who"] == "installation:777"
    with gk_api.client() as c:
        d = c.delete(f"/v1/grants/{gid}")
    assert d.json()["provider_revocation"] == "succeeded"
    assert token in token_api.revoked
    assert_nowhere(gk_api, [*pem_lines(pem), token])


def test_github_app_installation_flow_through_the_connect_url(gk_api: Server, token_api: TokenApi) -> None:
    github_app(gk_api, token_api)

    def start(user: str) -> tuple[str, str]:
        with gk_api.client() as c:
            s = c.post("/v1/connect/sessions", json={"integration_id": "gh", "user_id": user, "return_to": RETURN})
        assert s.status_code == 201, s.text
        go = httpx.get(s.json()["connect_url"], follow_redirects=False)
        assert go.status_code == 302, go.text
        where = go.headers["location"]
        assert where.startswith(token_api.base_url + "/apps/acme-bot/installations/new?")
        return s.json()["id"], parse_qs(urlsplit(where).query)["state"][0]

    session_id, state = start("org-admin")
    cb = f"{gk_api.base_url}/oauth/callback"
    code = token_api.issue_code("alice")
    back = httpx.get(
        cb,
        params={"code": code, "installation_id": "778", "setup_action": "install", "state": state},
        follow_redirects=False,
    )
    assert back.status_code == 302, back.text
    q = parse_qs(urlsplit(back.headers["location"]).query)
    assert q["status"] == ["success"] and q["connect_session_id"] == [session_id]
    gid = q["grant_id"][0]
    with gk_api.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
        assert g["provider_account_id"] == "778" and g["user_id"] == "org-admin"
        assert c.get(f"/v1/connect/sessions/{session_id}").json()["status"] == "completed"
    assert post(gk_api, f"/v1/grants/{gid}/token").status_code == 200

    # the state is single-use
    again = httpx.get(cb, params={"code": token_api.issue_code("alice"), "installation_id": "778", "setup_action": "install", "state": state})
    assert again.status_code == 400
    # an installation that is not the app's goes back to the app as an error, no grant
    _, state2 = start("someone")
    token_api.user_installations["alice"].add("123456")
    spoofed = httpx.get(
        cb,
        params={"code": token_api.issue_code("alice"), "installation_id": "123456", "setup_action": "install", "state": state2},
        follow_redirects=False,
    )
    q2 = parse_qs(urlsplit(spoofed.headers["location"]).query)
    assert q2["status"] == ["error"] and q2["error"] == ["installation_rejected"]
    with gk_api.client() as c:
        assert c.get("/v1/grants", params={"user_id": "someone"}).json()["data"] == []
    # no state at all (an installation started on GitHub): the 400 page
    assert httpx.get(cb, params={"installation_id": "777", "setup_action": "install"}).status_code == 400


def test_installation_tokens_renewed_before_expiry(gk_api: Server, token_api: TokenApi) -> None:
    github_app(gk_api, token_api)
    token_api.ttl = 4
    r = create_grant(gk_api, "gh", "org", {"installation_id": "777"})
    assert r.status_code == 201
    first = r.json()["access_token_expires_at"]
    deadline = time.monotonic() + 15
    now: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with gk_api.client() as c:
            now = c.get(f"/v1/grants/{r.json()['id']}").json()
        if now["access_token_expires_at"] != first:
            break
        time.sleep(0.3)
    assert now["access_token_expires_at"] != first, "the worker did not renew the installation token"


def test_a_forged_installation_id_connects_nothing(gk_api: Server, token_api: TokenApi) -> None:
    """The installation must be one the connecting user can access, proven by GitHub's
    ``GET /user/installations`` with the user token from the callback's ``code``; an
    installation of the app that belongs to someone else, or no ``code`` at all, is refused."""
    github_app(gk_api, token_api)
    cb = f"{gk_api.base_url}/oauth/callback"

    def attempt(user: str, params: dict[str, str]) -> dict[str, list[str]]:
        with gk_api.client() as c:
            s = c.post("/v1/connect/sessions", json={"integration_id": "gh", "user_id": user, "return_to": RETURN})
        assert s.status_code == 201, s.text
        go = httpx.get(s.json()["connect_url"], follow_redirects=False)
        state = parse_qs(urlsplit(go.headers["location"]).query)["state"][0]
        back = httpx.get(cb, params={**params, "state": state, "setup_action": "install"}, follow_redirects=False)
        assert back.status_code == 302, back.text
        assert back.headers["location"].startswith(RETURN)
        return parse_qs(urlsplit(back.headers["location"]).query)

    # mallory can access 777 only; 778 is alice's installation of the same app
    forged = attempt("mallory-app-user", {"installation_id": "778", "code": token_api.issue_code("mallory")})
    assert forged["status"] == ["error"] and forged["error"] == ["installation_rejected"], forged
    # no user authorization at all: nothing proves who installed it
    bare = attempt("mallory-app-user", {"installation_id": "778"})
    assert bare["status"] == ["error"] and bare["error"] == ["installation_rejected"], bare
    # a code that GitHub does not know (or one already redeemed)
    used = token_api.issue_code("alice")
    token_api.codes.pop(used)
    stale = attempt("mallory-app-user", {"installation_id": "778", "code": used})
    assert stale["status"] == ["error"] and stale["error"] == ["installation_rejected"], stale
    with gk_api.client() as c:
        assert c.get("/v1/grants", params={"user_id": "mallory-app-user"}).json()["data"] == []
    # her own installation connects
    ok = attempt("mallory-app-user", {"installation_id": "777", "code": token_api.issue_code("mallory")})
    assert ok["status"] == ["success"], ok
    assert token_api.codes == {}, "every code was redeemed once"
    assert_nowhere(gk_api, [APP_CLIENT_SECRET])
