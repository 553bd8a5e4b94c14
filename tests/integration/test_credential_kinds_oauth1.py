"""``oauth1`` grants (RFC 5849, HMAC-SHA1) end to end on SQLite and PostgreSQL against a local
OAuth 1.0a provider built on Authlib's server components (``tests.support.oauth1api``): the
three-legged flow through the connect URL, grants from ``credentials``, ``/credentials``,
signed proxy calls (query and form bodies included), 409 ``no_access_token``, delete.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from tests.integration.test_credential_kinds import (
    assert_nowhere,
    create_grant,
    post,
    put_integration,
)
from tests.support.gk import Server, require_postgres, running_server
from tests.support.oauth1api import OAuth1Api

RETURN = "http://127.0.0.1:9/app/done"


@pytest.fixture(params=["sqlite", "postgres"])
def gk_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "postgres":
        require_postgres()
    with running_server(request.param, tmp_path, worker=False) as server:
        yield server


def oauth1_integration(server: Server, api: OAuth1Api) -> tuple[str, str]:
    key, secret = "ck_" + secrets.token_hex(4), "cs_" + secrets.token_urlsafe(12)
    api.consumers[key] = secret
    put_integration(
        server,
        "trello",
        {
            "provider": "oauth1",
            "client_id": key,
            "client_secret": secret,
            "endpoints": {
                "request_token_url": api.base_url + "/oauth/request_token",
                "authorization_url": api.base_url + "/oauth/authorize",
                "access_token_url": api.base_url + "/oauth/access_token",
            },
            "api_base_url": api.base_url + "/api",
            "verify_request": {"path": "/members/me"},
            "return_urls": [RETURN],
        },
    )
    return key, secret


def connect(server: Server, user: str) -> httpx.Response:
    with server.client() as c:
        s = c.post("/v1/connect/sessions", json={"integration_id": "trello", "user_id": user, "return_to": RETURN})
    assert s.status_code == 201, s.text
    # browser: connect URL -> provider's authorize page -> our callback -> the app
    go = httpx.get(s.json()["connect_url"], follow_redirects=False)
    assert go.status_code == 302, go.text
    approve = httpx.get(go.headers["location"], follow_redirects=False)
    assert approve.status_code == 302
    return httpx.get(approve.headers["location"], follow_redirects=False)


def test_oauth1_three_legged_flow_signed_proxy_and_delete(gk_api: Server, oauth1_api: OAuth1Api) -> None:
    key, consumer_secret = oauth1_integration(gk_api, oauth1_api)
    back = connect(gk_api, "u1")
    assert back.status_code == 302, back.text
    q = parse_qs(urlsplit(back.headers["location"]).query)
    assert q["status"] == ["success"], q
    gid = q["grant_id"][0]
    (token, (token_secret, user_id)), = oauth1_api.tokens.items()
    with gk_api.client() as c:
        g = c.get(f"/v1/grants/{gid}").json()
    assert g["provider_account_id"] == user_id and g["status"] == "active"

    tok = post(gk_api, f"/v1/grants/{gid}/token")
    assert tok.status_code == 409 and tok.json()["code"] == "no_access_token"
    creds = post(gk_api, f"/v1/grants/{gid}/credentials")
    assert creds.json() == {"type": "oauth1", "consumer_key": key, "oauth_token": token, "oauth_token_secret": token_secret}
    assert consumer_secret not in creds.text

    with gk_api.client() as c:
        r = c.get(f"/v1/proxy/{gid}/1/members/me", params={"fields": "username,fullName"})
        assert r.status_code == 200, r.text
        assert r.json()["who"] == user_id
        form = c.post(f"/v1/proxy/{gid}/1/cards", data={"name": "A card", "idList": "42"})
        assert form.status_code == 200, form.text
        assert form.json()["form"] == {"name": "A card", "idList": "42"}
    assert all(status == 200 for _, _, status in oauth1_api.seen)

    with gk_api.client() as c:
        assert c.delete(f"/v1/grants/{gid}").status_code == 200
    assert post(gk_api, f"/v1/grants/{gid}/credentials").json()["code"] == "grant_revoked"
    assert_nowhere(gk_api, [token_secret, consumer_secret])


def test_oauth1_denied_and_replayed_callbacks(gk_api: Server, oauth1_api: OAuth1Api) -> None:
    oauth1_integration(gk_api, oauth1_api)
    oauth1_api.deny = True
    back = connect(gk_api, "u1")
    q = parse_qs(urlsplit(back.headers["location"]).query)
    assert q["status"] == ["error"] and q["error"] == ["access_denied"]
    oauth1_api.deny = False
    assert httpx.get(f"{gk_api.base_url}/oauth/callback", params={"oauth_token": "rt_unknown", "oauth_verifier": "x"}).status_code == 400


def test_oauth1_grant_from_credentials_is_verified(gk_api: Server, oauth1_api: OAuth1Api) -> None:
    oauth1_integration(gk_api, oauth1_api)
    oauth1_api.tokens["at_given"] = ("given-secret", "user-given")
    bad = create_grant(gk_api, "trello", "u2", {"oauth_token": "at_given", "oauth_token_secret": "wrong"})
    assert bad.status_code == 422 and bad.json()["code"] == "credentials_rejected", bad.text
    ok = create_grant(gk_api, "trello", "u2", {"oauth_token": "at_given", "oauth_token_secret": "given-secret"})
    assert ok.status_code == 201, ok.text
    with gk_api.client() as c:
        r = c.get(f"/v1/proxy/{ok.json()['id']}/1/boards")
    assert r.status_code == 200 and r.json()["who"] == "user-given"


def test_catalog_oauth1_entry_connects_verifies_and_signs(gk_api: Server, oauth1_api: OAuth1Api) -> None:
    """A catalog entry (tumblr-oauth1) driven end to end: its endpoints pointed at the local
    provider, its own verify_request (GET /user/info) proving a given credential."""
    key, secret = "ck_" + secrets.token_hex(4), "cs_" + secrets.token_urlsafe(12)
    oauth1_api.consumers[key] = secret
    integ = put_integration(
        gk_api,
        "tumblr",
        {
            "provider": "tumblr-oauth1",
            "client_id": key,
            "client_secret": secret,
            "endpoints": {
                "request_token_url": oauth1_api.base_url + "/oauth/request_token",
                "authorization_url": oauth1_api.base_url + "/oauth/authorize",
                "access_token_url": oauth1_api.base_url + "/oauth/access_token",
            },
            "api_base_url": oauth1_api.base_url + "/api",
            "return_urls": [RETURN],
        },
    )
    assert integ["provider"] == "tumblr-oauth1"

    with gk_api.client() as c:
        s = c.post("/v1/connect/sessions", json={"integration_id": "tumblr", "user_id": "u1", "return_to": RETURN})
    assert s.status_code == 201, s.text
    go = httpx.get(s.json()["connect_url"], follow_redirects=False)
    approve = httpx.get(go.headers["location"], follow_redirects=False)
    back = httpx.get(approve.headers["location"], follow_redirects=False)
    q = parse_qs(urlsplit(back.headers["location"]).query)
    assert q["status"] == ["success"], q
    with gk_api.client() as c:
        r = c.get(f"/v1/proxy/{q['grant_id'][0]}/user/info")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/api/user/info"

    # the entry's verify_request is what accepts or rejects a grant from credentials
    oauth1_api.tokens["at_cat"] = ("cat-secret", "user-cat")
    bad = create_grant(gk_api, "tumblr", "u2", {"oauth_token": "at_cat", "oauth_token_secret": "wrong"})
    assert bad.status_code == 422 and bad.json()["code"] == "credentials_rejected", bad.text
    ok = create_grant(gk_api, "tumblr", "u2", {"oauth_token": "at_cat", "oauth_token_secret": "cat-secret"})
    assert ok.status_code == 201, ok.text
    assert ("GET", "/api/user/info", 200) in oauth1_api.seen
