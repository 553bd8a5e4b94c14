"""Remote MCP servers (issue 16, CONTRACT "MCP servers"): an integration from a server URL
alone, self-registration (RFC 7591 against oidc-provider; a client ID metadata document
that oidc-provider fetches and checks), resource-bound tokens (RFC 8707) and the proxy
for MCP's streamable HTTP transport, against real processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from tests.support.burst import Answer, parallel_posts
from tests.support.flows import RETURN_URL, start_connect
from tests.support.gk import Server, WebhookSink, running_server
from tests.support.mcp_server import McpServer, sse_messages
from tests.support.oidc import OidcServer, decode_jwt_unverified

pytestmark = pytest.mark.oidc

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
ACCEPT = "application/json, text/event-stream"


def _start_as(tmp: pytest.TempPathFactory, *flags: str) -> OidcServer:
    server = OidcServer(log_path=tmp.mktemp("mcp_as") / "server.log", extra_args=flags)
    return server.start()


@pytest.fixture(scope="session")
def dcr_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    server = _start_as(tmp_path_factory, "--resource-indicators")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cimd_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcServer]:
    server = _start_as(tmp_path_factory, "--resource-indicators", "--cimd")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _dcr_mcp(dcr_as: OidcServer) -> Iterator[McpServer]:
    server = McpServer(dcr_as.issuer, dcr_as.jwks_uri).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _cimd_mcp(cimd_as: OidcServer) -> Iterator[McpServer]:
    server = McpServer(cimd_as.issuer, cimd_as.jwks_uri).start()
    yield server
    server.stop()


@pytest.fixture
def mcp(_dcr_mcp: McpServer, dcr_as: OidcServer) -> McpServer:
    dcr_as.reset()
    _dcr_mcp.reset()
    return _dcr_mcp


@pytest.fixture
def cimd_mcp(_cimd_mcp: McpServer, cimd_as: OidcServer) -> McpServer:
    cimd_as.reset()
    _cimd_mcp.reset()
    return _cimd_mcp


def put_mcp(server: Server, integration_id: str, server_url: str, **extra: Any) -> httpx.Response:
    body = {"provider": "mcp", "server_url": server_url, "return_urls": [RETURN_URL], **extra}
    with server.client() as c:
        return c.put(f"/v1/integrations/{integration_id}", json=body)


def connect_mcp(server: Server, oidc: OidcServer, integration_id: str, user_id: str) -> tuple[str, dict[str, list[str]]]:
    """The dance; returns the grant id and the authorization request's parameters."""
    session = start_connect(server, integration_id, user_id)
    first = httpx.get(session["connect_url"], follow_redirects=False)
    assert first.status_code in (302, 303), first.text
    authz = parse_qs(urlsplit(first.headers["location"]).query)
    outcome = oidc.authorize(session["connect_url"], stop_origin=server.base_url)
    assert outcome.query.get("status") == "success", (outcome.final_url, outcome.last_response.text[:300])
    return outcome.query["grant_id"], authz


def rpc(c: httpx.Client, gid: str, body: dict[str, Any], session: str | None = None) -> httpx.Response:
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    if session:
        headers["Mcp-Session-Id"] = session
    return c.post(f"/v1/proxy/{gid}/", json=body, headers=headers)


def refreshes(oidc: OidcServer) -> list[dict[str, Any]]:
    return [r for r in oidc.stats()["token_requests"] if r["grant_type"] == "refresh_token"]


def test_dcr_integration_from_server_url_connects_calls_and_refreshes(
    gk: Server, dcr_as: OidcServer, mcp: McpServer
) -> None:
    r = put_mcp(gk, "tools", mcp.url)
    assert r.status_code == 201, r.text
    integ = r.json()
    assert integ["server_url"] == mcp.url
    assert integ["mcp"]["resource"] == mcp.url
    assert integ["mcp"]["authorization_server"] == dcr_as.issuer
    assert integ["mcp"]["registration"] == "dcr"
    assert integ["mcp"]["resource_metadata_url"] == mcp.metadata_url()  # from the 401 challenge
    assert integ["client_id"] and integ["client_secret_set"] is True
    # the unauthenticated probe is what found the metadata
    assert mcp.seen[0].status == 401 and mcp.seen[0].rpc_method == "initialize"

    gid, authz = connect_mcp(gk, dcr_as, "tools", "u-mcp")
    assert authz["resource"] == [mcp.url]
    assert authz["code_challenge_method"] == ["S256"]
    assert set(authz["scope"][0].split()) == {"mcp:tools", "offline_access"}
    code_requests = [t for t in dcr_as.stats()["token_requests"] if t["grant_type"] == "authorization_code"]
    assert code_requests[-1]["resource"] == mcp.url

    with gk.client() as c:
        init = rpc(c, gid, INIT)
        assert init.status_code == 200, init.text
        session = init.headers["mcp-session-id"]
        assert init.json()["result"]["serverInfo"]["name"] == "test-mcp"
        assert rpc(c, gid, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session).status_code == 202
        # a tool call answered as server-sent events, relayed as they come
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
        headers = {"Accept": ACCEPT, "Content-Type": "application/json", "Mcp-Session-Id": session}
        arrivals: list[float] = []
        chunks: list[bytes] = []
        with c.stream("POST", f"/v1/proxy/{gid}/", json=call, headers=headers) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            for chunk in resp.iter_raw():
                arrivals.append(time.monotonic())
                chunks.append(chunk)
        messages = sse_messages(b"".join(chunks).decode())
        assert messages[0]["method"] == "notifications/progress"
        assert arrivals[-1] - arrivals[0] >= 0.2, "the events were buffered, not streamed"
        result = messages[-1]["result"]["content"][0]["text"]
        assert f'"aud": "{mcp.url}"' in result and f'"session": "{session}"' in result
        # a call without the session is the server's to refuse; other paths are appended
        assert rpc(c, gid, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).status_code == 400
        appended = c.post(f"/v1/proxy/{gid}/x", json=INIT)
        assert appended.status_code == 404 and appended.json() == {"error": "not_found"}

        # the token is bound to this server: another resource refuses it
        token = c.post(f"/v1/grants/{gid}/token", json={}).json()["access_token"]
        assert decode_jwt_unverified(token)[1]["aud"] == mcp.url
        direct = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
        assert httpx.post(mcp.url, json=INIT, headers=direct).status_code == 200
        other = httpx.post(mcp.other_url, json=INIT, headers=direct)
        assert other.status_code == 401 and "invalid_token" in other.headers["www-authenticate"]

        # refresh with rotation, the resource bound on the refresh request
        before = len(refreshes(dcr_as))
        fresh = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert fresh.status_code == 200, fresh.text
        new_token = fresh.json()["access_token"]
        assert new_token != token and decode_jwt_unverified(new_token)[1]["aud"] == mcp.url
        again = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert again.status_code == 200, again.text  # the rotated refresh token was kept
        done = refreshes(dcr_as)
        assert len(done) - before == 2 and all(t["resource"] == mcp.url for t in done)
        grant = c.get(f"/v1/grants/{gid}").json()
        assert grant["status"] == "active" and grant["has_refresh_token"] is True
        # the proxied call still works with the newest token
        assert rpc(c, gid, INIT).status_code == 200
        # the integration GET reports the same
        got = c.get("/v1/integrations/tools").json()
        assert got["mcp"]["registration"] == "dcr"


def test_proxy_refreshes_once_on_401_and_webhooks_fire(
    gk: Server, dcr_as: OidcServer, mcp: McpServer, webhook_sink: WebhookSink
) -> None:
    with gk.client() as c:
        c.post("/v1/webhook-endpoints", json={"url": webhook_sink.url, "events": ["*"]})
    assert put_mcp(gk, "tools", mcp.url).status_code == 201
    gid, _ = connect_mcp(gk, dcr_as, "tools", "u-401")
    webhook_sink.wait_for(lambda w: w.json()["type"] == "grant.created")
    before = len(refreshes(dcr_as))
    mcp.knobs.reject_valid_tokens = 1
    mcp.seen.clear()
    with gk.client() as c:
        r = rpc(c, gid, INIT)
        assert r.status_code == 200, r.text
    assert len(refreshes(dcr_as)) - before == 1
    first, second = mcp.seen[0], mcp.seen[1]
    assert (first.status, second.status) == (401, 200)
    assert first.authorization != second.authorization  # replayed with the new token
    # a server that keeps refusing gets exactly one refresh and its 401 passed on
    mcp.knobs.reject_valid_tokens = 5
    before = len(refreshes(dcr_as))
    with gk.client() as c:
        assert rpc(c, gid, INIT).status_code == 401
    assert len(refreshes(dcr_as)) - before == 1


def test_registration_secrets_are_sealed_and_never_logged(tmp_path: Path, dcr_as: OidcServer, mcp: McpServer) -> None:
    with running_server("sqlite", tmp_path) as server:
        integ = put_mcp(server, "tools", mcp.url).json()
        got = dcr_as.http.get("/__control/client-secrets", params={"client_id": integ["client_id"]}).json()
        secrets = [got["client_secret"], *got["registration_access_tokens"]]
        assert got["client_secret"] and got["registration_access_tokens"]
        with server.client() as c:
            view = c.get("/v1/integrations/tools").text
        path = Path(server.db.url.removeprefix("sqlite+aiosqlite:///"))
        db = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # WAL too
        assert integ["client_id"].encode() in db  # the search does find what is stored
        for secret in secrets:
            assert secret not in view
            assert secret.encode() not in db
            assert secret not in server.log_text()


def test_put_again_keeps_the_registration(gk: Server, dcr_as: OidcServer, mcp: McpServer) -> None:
    first = put_mcp(gk, "tools", mcp.url).json()
    second = put_mcp(gk, "tools", mcp.url, scopes=["mcp:tools"])
    assert second.status_code == 200, second.text
    assert second.json()["client_id"] == first["client_id"]
    assert second.json()["scopes"] == ["mcp:tools"]


def test_cimd_registration_is_fetched_and_checked_by_the_server(
    gk: Server, cimd_as: OidcServer, cimd_mcp: McpServer
) -> None:
    r = put_mcp(gk, "cimd-tools", cimd_mcp.url)
    assert r.status_code == 201, r.text
    integ = r.json()
    doc_url = gk.base_url + "/oauth/client-metadata.json"
    assert integ["mcp"]["registration"] == "cimd" and integ["client_id"] == doc_url
    assert integ["client_secret_set"] is False
    doc = httpx.get(doc_url).json()
    assert doc["client_id"] == doc_url
    assert doc["redirect_uris"] == [gk.base_url + "/oauth/callback"]
    assert doc["grant_types"] == ["authorization_code", "refresh_token"]

    gid, authz = connect_mcp(gk, cimd_as, "cimd-tools", "u-cimd")
    assert authz["client_id"] == [doc_url] and authz["resource"] == [cimd_mcp.url]
    fetches = cimd_as.stats()["cimd_fetches"]
    assert fetches and all(f["url"] == doc_url and f["accepted"] for f in fetches)
    with gk.client() as c:
        init = rpc(c, gid, INIT)
        assert init.status_code == 200, init.text
        assert init.headers["mcp-session-id"]
        assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200
        assert c.get(f"/v1/grants/{gid}").json()["status"] == "active"


async def _burst(base: str, key: str, gid: str, n: int) -> list[Answer]:
    # min_ttl the refreshed token (120 s) satisfies: with a refresh budget of 0 (the test
    # setting) a min_ttl above the token's lifetime may legitimately refresh again (CONTRACT v2)
    return await parallel_posts(f"{base}/v1/grants/{gid}/token", key, {"min_ttl": 60}, n)


def test_200_callers_on_an_expired_mcp_grant_refresh_once(
    backend: str, tmp_path: Path, dcr_as: OidcServer, mcp: McpServer
) -> None:
    with running_server(backend, tmp_path, worker=False) as quiet:
        assert put_mcp(quiet, "tools", mcp.url).status_code == 201
        dcr_as.set_ttl(AccessToken=2)
        gid, _ = connect_mcp(quiet, dcr_as, "tools", "u-burst")
        time.sleep(2.5)
        dcr_as.set_ttl(AccessToken=120)
        before = len(refreshes(dcr_as))
        results = asyncio.run(_burst(quiet.base_url, quiet.admin_key, gid, 200))
        assert all(r.status_code == 200 for r in results), {r.status_code for r in results}
        assert len({r.json()["access_token"] for r in results}) == 1
        assert len(refreshes(dcr_as)) - before == 1
        with quiet.client() as c:
            assert rpc(c, gid, INIT).status_code == 200


@pytest.fixture
def sqlite_gk(tmp_path: Path) -> Iterator[Server]:
    with running_server("sqlite", tmp_path) as server:
        yield server


def _refused(r: httpx.Response, code: str, *names: str) -> None:
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == code, problem
    for name in names:
        assert name in problem["detail"], problem["detail"]


def test_discovery_refuses_mismatched_documents(sqlite_gk: Server, dcr_as: OidcServer, mcp: McpServer) -> None:
    # the resource metadata names another resource (RFC 9728 3.3)
    mcp.knobs.resource_override = mcp.base + "/elsewhere"
    _refused(put_mcp(sqlite_gk, "a", mcp.url), "mcp_discovery_failed", mcp.metadata_url())
    mcp.reset()
    # the authorization server's metadata names another issuer (RFC 8414 3.3)
    mcp.knobs.authorization_servers = [mcp.fake_issuer]
    meta = dict(dcr_as.discovery(), issuer=dcr_as.issuer)
    mcp.knobs.fake_as_metadata = meta
    _refused(put_mcp(sqlite_gk, "a", mcp.url), "mcp_discovery_failed", mcp.fake_issuer)
    # ... and one that registers nobody: no client ID metadata documents, no registration
    mcp.knobs.fake_as_metadata = {
        k: v for k, v in dict(meta, issuer=mcp.fake_issuer).items() if k != "registration_endpoint"
    }
    _refused(put_mcp(sqlite_gk, "a", mcp.url), "client_registration_unavailable", mcp.fake_issuer)
    # with a client of its own it works, used as given
    client_id, secret = dcr_as.register_client([sqlite_gk.base_url + "/oauth/callback"])
    r = put_mcp(sqlite_gk, "a", mcp.url, client_id=client_id, client_secret=secret)
    assert r.status_code == 201, r.text
    assert r.json()["mcp"]["registration"] == "static" and r.json()["client_id"] == client_id
    mcp.reset()
    # no challenge parameter: the RFC 9728 well-known URL is used
    mcp.knobs.advertise_metadata = False
    r = put_mcp(sqlite_gk, "b", mcp.url)
    assert r.status_code == 201, r.text
    assert r.json()["mcp"]["resource_metadata_url"] == mcp.base + "/.well-known/oauth-protected-resource/mcp"
    # neither: the failure names the URL that was tried
    mcp.knobs.serve_well_known = False
    _refused(put_mcp(sqlite_gk, "c", mcp.url), "mcp_discovery_failed", "/.well-known/oauth-protected-resource/mcp")
    with sqlite_gk.client() as c:
        assert c.get("/v1/integrations/c").status_code == 404


def test_private_addresses_are_refused_without_the_setting(tmp_path: Path, mcp: McpServer) -> None:
    with running_server("sqlite", tmp_path, GRANTKEEPER_ALLOW_PRIVATE_NETWORKS="0") as strict:
        _refused(put_mcp(strict, "a", mcp.url), "mcp_discovery_failed", mcp.url)
    assert mcp.seen == [], "nothing may be sent to a private address"


def test_catalog_mcp_entry_connects_and_calls_through_the_proxy(
    gk: Server, dcr_as: OidcServer, mcp: McpServer
) -> None:
    """A catalog entry (neon-mcp) driven end to end: its server URL pointed at the local MCP
    server, discovery, dynamic registration, the dance and a proxied call as for any server."""
    with gk.client() as c:
        listed = c.get("/v1/providers/neon-mcp")
    assert listed.status_code == 200, listed.text
    r = put_mcp(gk, "neon", mcp.url, provider="neon-mcp")
    assert r.status_code == 201, r.text
    integ = r.json()
    assert integ["provider"] == "neon-mcp" and integ["server_url"] == mcp.url
    assert integ["mcp"]["registration"] == "dcr"

    gid, authz = connect_mcp(gk, dcr_as, "neon", "u-neon")
    assert authz["resource"] == [mcp.url]
    with gk.client() as c:
        init = rpc(c, gid, INIT)
    assert init.status_code == 200, init.text
    assert init.json()["result"]["serverInfo"]["name"] == "test-mcp"
