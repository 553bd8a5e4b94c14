"""The API proxy against the real oidc-provider (its protected /api as the provider's API).

A second loopback server plays the attacker's host: whatever the caller tries (traversal,
encoded traversal, absolute URLs, Host overrides, upstream redirects), it must receive
nothing, and refused paths must not reach the provider either.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.flows import RETURN_URL, connect, connect_grant, setup_oidc_integration
from tests.support.gk import Server, running_server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc

MiB = 1024 * 1024


# ---------------------------------------------------------------- helpers


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A loopback HTTP server that records every request it receives (any method)."""

    server: http.server.ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def evil() -> Iterator[Recorder]:
    yield from _recorder()


@pytest.fixture
def api_recorder() -> Iterator[Recorder]:
    yield from _recorder()


def _recorder() -> Iterator[Recorder]:
    rec: Recorder

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
            rec.requests.append(
                Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            payload = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Set-Cookie", "session=abc; Path=/")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any  # noqa: N815

        def log_message(self, *args: Any) -> None:
            return

    class Recording(http.server.ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            rec.connections.append(str(client_address))
            return True

    server = Recording(("127.0.0.1", 0), Handler)
    rec = Recorder(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def raw_request(server: Server, request: bytes, timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given (no client-side URL normalisation); read to close."""
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def get_raw(server: Server, target: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    req = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.admin_key}\r\n{extra}Connection: close\r\n\r\n"
    )
    return raw_request(server, req.encode("latin-1"))


def current_token(server: Server, gid: str) -> str:
    with server.client() as c:
        r = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0})
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token


def create_key(server: Server, *args: str) -> str:
    out = server.cli("api-keys", "create", "--name", "t", *args, "--json")
    key: str = json.loads(out.stdout)["key"]
    return key


def audit_events(server: Server, gid: str) -> list[dict[str, Any]]:
    with server.client() as c:
        r = c.get("/v1/audit-events", params={"grant_id": gid, "limit": 200})
        assert r.status_code == 200, r.text
        return [e for e in r.json()["data"] if e["action"] == "proxy.request"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def exported_tokens(server: Server, oidc: OidcServer, user: str) -> dict[str, Any]:
    """Connect once through an integration with token_export "once" and take the tokens."""
    outcome = connect(server, oidc, "acme", user)
    assert outcome.query.get("status") == "success", outcome.final_url
    with server.client() as c:
        r = c.post(f"/v1/connect/sessions/{outcome.query['connect_session_id']}/tokens")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data


def import_grant(server: Server, integration: str, user: str, **body: Any) -> str:
    with server.client() as c:
        r = c.post("/v1/grants", json={"integration_id": integration, "user_id": user, **body})
        assert r.status_code == 201, r.text
        gid: str = r.json()["id"]
        return gid


def in_a_day() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- stamping, pass-through


def test_stamps_bearer_and_forwards_method_path_query_body(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-1")
    token = current_token(gk, gid)
    with gk.client() as c:
        r = c.post(
            f"/v1/proxy/{gid}/echo/hello/a%2Fb?x=1&y=a%20b&x=2",
            content=b'{"hi": 1}',
            headers={
                "Content-Type": "application/json",
                "X-Custom": "kept",
                "Cookie": "gk_session=secret",
                "X-Forwarded-Host": "evil.tld",
                "X-Forwarded-For": "10.0.0.1",
                "Forwarded": "host=evil.tld",
                "X-Grantkeeper-Debug": "1",
                "Connection": "X-Hop",
                "X-Hop": "dropped",
            },
        )
    assert r.status_code == 200, r.text
    assert "set-cookie" not in r.headers
    echo = r.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/api/echo/hello/a%2Fb"
    assert echo["raw_query"] == "x=1&y=a%20b&x=2"
    assert echo["body"] == '{"hi": 1}'
    assert echo["account"] == "alice"
    h = echo["headers"]
    assert h["authorization"] == f"Bearer {token}"
    assert h["host"] == oidc.origin.removeprefix("http://")
    assert h["x-custom"] == "kept"
    assert h["content-type"] == "application/json"
    for name in ("cookie", "x-forwarded-host", "x-forwarded-for", "forwarded", "x-grantkeeper-debug", "x-hop"):
        assert name not in h, name
    assert gk.admin_key not in r.text
    assert token not in gk.log_text()


def test_methods_and_status_pass_through(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-2")
    with gk.client() as c:
        for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS"):
            r = c.request(method, f"/v1/proxy/{gid}/echo/m", content=b"x" if method in ("PUT", "PATCH") else None)
            assert r.status_code == 200, (method, r.text)
            assert r.json()["method"] == method
        head = c.head(f"/v1/proxy/{gid}/whoami")
        assert head.status_code == 200 and head.content == b""
        r = c.get(f"/v1/proxy/{gid}/status/429")
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert r.json() == {"status": 429, "account": "alice"}
        for code in (201, 404, 418, 500, 503):
            r = c.get(f"/v1/proxy/{gid}/status/{code}")
            assert r.status_code == code and r.json()["status"] == code
        r = c.get(f"/v1/proxy/{gid}/status/204")
        assert r.status_code == 204 and r.content == b""
        r = c.get(f"/v1/proxy/{gid}/nope")
        assert r.status_code == 404 and r.json() == {"error": "not_found"}
    events = audit_events(gk, gid)
    seen = {(e["detail"]["method"], e["detail"]["path"], e["detail"]["status"]) for e in events}
    assert ("GET", "/status/429", 429) in seen and ("HEAD", "/whoami", 200) in seen
    assert ("DELETE", "/echo/m", 200) in seen
    for e in events:
        assert "?" not in (e["detail"]["path"] or "")
        assert e["api_key_id"] is not None


def test_custom_header_stamp_from_catalog(gk: Server, api_recorder: Recorder) -> None:
    """Shopify wants ``X-Shopify-Access-Token: <token>``, not Authorization."""
    with gk.client() as c:
        r = c.put(
            "/v1/integrations/shop",
            json={
                "provider": "shopify",
                "client_id": "cid",
                "client_secret": "cs",
                "scopes": ["read_products"],
                "return_urls": [RETURN_URL],
                "settings": {"shop": "acme"},
                "api_base_url": api_recorder.origin + "/admin/api",
            },
        )
        assert r.status_code in (200, 201), r.text
    gid = import_grant(gk, "shop", "u", refresh_token="rt-1", access_token="shpat-123", expires_at=in_a_day(), verify=False)
    with gk.client() as c:
        r = c.get(f"/v1/proxy/{gid}/2024-01/shop.json?fields=id", headers={"X-Shopify-Access-Token": "callers"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert "set-cookie" not in r.headers
    [req] = api_recorder.requests
    assert req.path == "/admin/api/2024-01/shop.json?fields=id"
    assert req.headers["x-shopify-access-token"] == "shpat-123"
    assert "authorization" not in req.headers


# ---------------------------------------------------------------- 401: refresh and retry


def test_401_forces_one_refresh_and_replays(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc, token_export="once")
    tokens = exported_tokens(gk, oidc, "exporter")
    # a grant whose stored access token the provider does not know, believed valid for a day
    gid = import_grant(
        gk, "acme", "importer", refresh_token=tokens["refresh_token"], access_token="stale-token", expires_at=in_a_day(), verify=False
    )
    before = oidc.stats()["token"]["refresh_token"]
    with gk.client() as c:
        r = c.post(f"/v1/proxy/{gid}/echo/replay", content=b"small body", headers={"Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        assert r.json()["body"] == "small body" and r.json()["account"] == "alice"
        assert oidc.stats()["token"]["refresh_token"] == before + 1
        # the refreshed token is kept: no more refreshes
        r = c.get(f"/v1/proxy/{gid}/whoami")
        assert r.status_code == 200
    assert oidc.stats()["token"]["refresh_token"] == before + 1
    retried = [e for e in audit_events(gk, gid) if e["detail"].get("retried")]
    assert len(retried) == 1 and retried[0]["detail"]["status"] == 200


def test_401_with_a_large_body_is_not_replayed_but_refreshes(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc, token_export="once")
    tokens = exported_tokens(gk, oidc, "exporter")
    gid = import_grant(
        gk, "acme", "importer", refresh_token=tokens["refresh_token"], access_token="stale-token", expires_at=in_a_day(), verify=False
    )
    big = b"z" * (2 * MiB)
    with gk.client() as c:
        r = c.post(f"/v1/proxy/{gid}/echo/big", content=big, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 401  # the provider's answer: a streamed body cannot be sent twice
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.post(f"/v1/proxy/{gid}/echo/big", content=big, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["body"]) == len(big)


def test_401_after_the_provider_revoked_everything_is_grant_invalid(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-x", account="bob")
    with gk.client() as c:
        assert c.get(f"/v1/proxy/{gid}/whoami").status_code == 200
        oidc.revoke_account_grants("bob")
        r = c.get(f"/v1/proxy/{gid}/whoami")
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "grant_invalid"
        before = oidc.stats()["api"]
        r = c.get(f"/v1/proxy/{gid}/whoami")
        assert r.status_code == 409 and oidc.stats()["api"] == before  # no call upstream any more


def test_revoked_grant_is_409(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-r")
    with gk.client() as c:
        assert c.delete(f"/v1/grants/{gid}").status_code == 200
        before = oidc.stats()["api"]
        r = c.get(f"/v1/proxy/{gid}/whoami")
        assert r.status_code == 409 and r.json()["code"] == "grant_revoked"
    assert oidc.stats()["api"] == before


# ---------------------------------------------------------------- streaming in bounded memory


def test_large_download_streams_in_bounded_memory(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-big")
    size = 96 * MiB
    pattern = bytes(range(256)) * 512  # 128 KiB, a multiple of 256
    pid = gk.proc.pid
    with gk.client() as c:  # warm up: connections, token, code paths
        assert c.get(f"/v1/proxy/{gid}/large", params={"size": MiB}).status_code == 200
    baseline = rss_kib(pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received = 0
    started = time.monotonic()
    try:
        with gk.client(timeout=120) as c, c.stream("GET", f"/v1/proxy/{gid}/large", params={"size": size}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/octet-stream"
            for i, chunk in enumerate(r.iter_raw()):
                off = received % 256
                n = len(chunk)
                window = (pattern * (1 + (off + n) // len(pattern) + 1))[off : off + n]
                assert chunk == window, f"corrupt bytes at {received}"
                received += n
                if i == 0:
                    time.sleep(2)  # a slow reader: a proxy without backpressure would buffer now
    finally:
        stop.set()
        sampler.join()
    assert received == size
    growth_mib = (peak - baseline) / 1024
    print(  # noqa: T201 - reported in the test output (-s)
        f"\nproxy RSS: baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
        f"growth {growth_mib:.1f} MiB for a {size // MiB} MiB body in {time.monotonic() - started:.1f}s"
    )
    assert growth_mib < 24, f"RSS grew by {growth_mib:.1f} MiB while streaming {size // MiB} MiB"


def test_caller_going_away_mid_stream_stops_the_download(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-gone")
    with gk.client() as c:
        for _ in range(3):
            with c.stream("GET", f"/v1/proxy/{gid}/large", params={"size": 1024 * MiB}) as r:
                assert r.status_code == 200
                next(r.iter_raw())
        r = c.get(f"/v1/proxy/{gid}/whoami")
        assert r.status_code == 200
    log = gk.log_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log


def test_large_upload_streams(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-up")
    blob = b"0123456789abcdef" * (512 * 1024)  # 8 MiB (the test API echoes up to 10 MiB)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(blob), 100_000):
            yield blob[i : i + 100_000]

    with gk.client(timeout=60) as c:
        # chunked, without a length
        r = c.put(f"/v1/proxy/{gid}/echo/up", content=chunks(), headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text[:300]
        echo = r.json()
        assert echo["body"] == blob.decode()
        assert echo["headers"].get("transfer-encoding") == "chunked"
        # with a Content-Length: forwarded as such
        r = c.put(f"/v1/proxy/{gid}/echo/up", content=b"a" * (3 * MiB), headers={"Content-Type": "text/plain"})
        assert r.status_code == 200
        echo = r.json()
        assert echo["headers"]["content-length"] == str(3 * MiB) and echo["body"] == "a" * (3 * MiB)


# ---------------------------------------------------------------- caps and timeouts


@pytest.fixture
def capped(backend: str, tmp_path: Path) -> Iterator[Server]:
    with running_server(
        backend,
        tmp_path,
        worker=False,
        GRANTKEEPER_PROXY_TIMEOUT="1.5",
        GRANTKEEPER_PROXY_MAX_RESPONSE_BYTES=str(MiB),
        GRANTKEEPER_PROXY_MAX_REQUEST_BYTES=str(2 * MiB),
    ) as server:
        yield server


def test_timeouts_and_size_caps(capped: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(capped, oidc)
    gid = connect_grant(capped, oidc, "acme", "user-cap")
    with capped.client() as c:
        assert c.get(f"/v1/proxy/{gid}/slow", params={"ms": 100}).status_code == 200
        t0 = time.monotonic()
        r = c.get(f"/v1/proxy/{gid}/slow", params={"ms": 5000})
        assert r.status_code == 504 and r.json()["code"] == "upstream_timeout"
        assert r.headers["content-type"] == "application/problem+json"
        assert time.monotonic() - t0 < 4
        # a declared length over the cap: refused before any header goes out
        r = c.post(f"/v1/proxy/{gid}/echo/x", content=b"b" * (MiB + 10), headers={"Content-Type": "text/plain"})
        assert r.status_code == 502 and r.json()["code"] == "upstream_response_too_large"
        # a streamed body over the cap: cut off, visibly incomplete
        with pytest.raises(httpx.RemoteProtocolError), c.stream("GET", f"/v1/proxy/{gid}/large", params={"size": 3 * MiB}) as s:
            assert s.status_code == 200
            got = sum(len(b) for b in s.iter_raw())
            raise AssertionError(f"the stream ended cleanly after {got} bytes")
        r = c.get(f"/v1/proxy/{gid}/large", params={"size": MiB // 2})
        assert r.status_code == 200 and len(r.content) == MiB // 2
        # request bodies over the cap: 413, declared or chunked
        before = oidc.stats()["api"]
        r = c.post(f"/v1/proxy/{gid}/echo/x", content=b"c" * (3 * MiB))
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        assert oidc.stats()["api"] == before

        def chunks() -> Iterator[bytes]:
            for _ in range(30):
                yield b"d" * 100_000

        r = c.post(f"/v1/proxy/{gid}/echo/x", content=chunks())
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        assert c.get(f"/v1/proxy/{gid}/whoami").status_code == 200  # still healthy
    events = audit_events(capped, gid)
    assert any(e["detail"]["status"] == 504 and e["detail"].get("error") == "upstream_timeout" for e in events)


# ---------------------------------------------------------------- the token goes nowhere else (C13)


TRAVERSALS = [
    "../echo/x",
    "echo/../../x",
    "..%2fecho",
    "%2e%2e/echo",
    "%2e%2e%2f%2e%2e%2fx",
    "%252e%252e/x",
    "%252e%252e%252f%252e%252e%252f",
    "..;/echo",
    "echo/..;/..;/x",
    "..%5cx",
    "..%255cx",
    "%c0%ae%c0%ae/x",
    ".",
    "..",
    "echo//x",
    "a%00b",
    "a%0dSet-Cookie:%20x=1",
    "a%250d%250aSet-Cookie:%20x=1",
]
# an encoded line feed inside the path does not match the route (Starlette's ``path``
# convertor stops at '\n'): 404 or 400, and nothing is called either way
NOT_ROUTED = ["a%0d%0aSet-Cookie:%20x=1", "%0a"]


def evil_paths(evil: Recorder) -> list[str]:
    n = evil.netloc
    return [
        f"/{n}/x",
        f"//{n}/x",
        f"%2f%2f{n}/x",
        f"http://{n}/x",
        f"http:%2f%2f{n}/x",
        f"http:/{n}/x",
        f"http:{n}",
        f"@{n}/x",
        f"%40{n}/x",
        f"user@{n}/x",
        f"x@{n}",
        f"javascript:fetch('//{n}')".replace(" ", "%20").replace("'", "%27"),
    ]


def test_no_path_trick_reaches_anything_but_the_base_url(gk: Server, oidc: OidcServer, evil: Recorder) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-evil")
    token = current_token(gk, gid)
    before = oidc.stats()["api"]
    for path in TRAVERSALS + evil_paths(evil):
        status, headers, body = get_raw(gk, f"/v1/proxy/{gid}/{path}")
        assert status == 400, (path, status, body[:300])
        problem = json.loads(body)
        assert problem["code"] == "invalid_proxy_path", (path, problem)
        assert headers["content-type"] == "application/problem+json"
        assert token.encode() not in body
    for path in NOT_ROUTED:
        status, _, body = get_raw(gk, f"/v1/proxy/{gid}/{path}")
        assert status in (400, 404), (path, status, body[:300])
    # tricks in the grant id segment: no grant, no call
    for target in (f"/v1/proxy/{gid}%2f..%2f/echo", f"/v1/proxy/{gid}%2F/echo", "/v1/proxy/..%2f/echo", f"/v1/proxy/x/{gid}/echo"):
        status, _, body = get_raw(gk, target)
        assert status == 404, (target, status, body[:200])
    assert oidc.stats()["api"] == before, "a refused path reached the provider"
    assert evil.requests == [] and evil.connections == []
    # a refused attempt is audited without its path
    rejected = [e for e in audit_events(gk, gid) if e["detail"]["status"] == 400]
    assert rejected and all(e["detail"]["error"] == "invalid_proxy_path" for e in rejected)


def test_host_overrides_and_absolute_form_are_ignored(gk: Server, oidc: OidcServer, evil: Recorder) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-host")
    n = evil.netloc
    oidc_host = oidc.origin.removeprefix("http://")
    req = (
        f"GET /v1/proxy/{gid}/echo/h HTTP/1.1\r\nHost: {n}\r\n"
        f"Authorization: Bearer {gk.admin_key}\r\nX-Forwarded-Host: {n}\r\nX-Forwarded-Proto: https\r\n"
        f"X-Forwarded-Port: 1\r\nForwarded: for=1.2.3.4;host={n};proto=https\r\nX-Original-URL: http://{n}/x\r\n"
        f"Connection: close\r\n\r\n"
    )
    status, _, body = raw_request(gk, req.encode())
    assert status == 200, body[:300]
    echo = json.loads(body)
    assert echo["headers"]["host"] == oidc_host and echo["path"] == "/api/echo/h"
    # absolute-form request target naming the evil host
    req = (
        f"GET http://{n}/v1/proxy/{gid}/echo/abs HTTP/1.1\r\nHost: {n}\r\n"
        f"Authorization: Bearer {gk.admin_key}\r\nConnection: close\r\n\r\n"
    )
    status, _, body = raw_request(gk, req.encode())
    assert status in (200, 400, 404), body[:300]
    if status == 200:
        assert json.loads(body)["headers"]["host"] == oidc_host
    assert evil.requests == [] and evil.connections == []


def test_redirects_are_returned_not_followed(gk: Server, oidc: OidcServer, evil: Recorder) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-redir")
    token = current_token(gk, gid)
    targets = [
        f"{evil.origin}/steal",
        f"//{evil.netloc}/steal",
        "http://169.254.169.254/latest/meta-data/",
        f"{oidc.api_base_url}/echo/followed",
        "/api/echo/followed",
    ]
    with gk.client(follow_redirects=False) as c:
        for to in targets:
            before = oidc.stats()["api"]
            r = c.get(f"/v1/proxy/{gid}/redirect", params={"to": to})
            assert r.status_code == 302, r.text
            assert r.headers["location"] == to
            assert token not in r.text and token not in str(r.headers)
            assert oidc.stats()["api"] == before + 1  # the redirect itself, nothing followed
    assert evil.requests == [] and evil.connections == []


def test_caller_authorization_is_never_forwarded(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-auth")
    key = create_key(gk, "--scope", "proxy")
    with httpx.Client(base_url=gk.base_url, headers={"Authorization": f"Bearer {key}"}) as c:
        r = c.get(f"/v1/proxy/{gid}/echo/a", headers={"Proxy-Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        echo = r.json()
        assert echo["headers"]["authorization"].startswith("Bearer ") and key not in r.text
        assert "proxy-authorization" not in echo["headers"]
    # two Authorization headers: not authenticated
    status, _, _ = raw_request(
        gk,
        (
            f"GET /v1/proxy/{gid}/echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Authorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    assert status == 401


def test_content_length_and_transfer_encoding_together(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    gid = connect_grant(gk, oidc, "acme", "user-smuggle")
    before = oidc.stats()["api"]
    req = (
        f"POST /v1/proxy/{gid}/echo/s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gk.admin_key}\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "0\r\n\r\nGET /api/echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    status, _, _ = raw_request(gk, req.encode())
    assert status == 400
    assert oidc.stats()["api"] == before


# ---------------------------------------------------------------- who may proxy what


def test_scope_environment_and_integration_limits(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc)
    setup_oidc_integration(gk, oidc, "other")
    gid = connect_grant(gk, oidc, "acme", "user-scope")
    read_only = create_key(gk, "--scope", "grants:read")
    other_only = create_key(gk, "--scope", "proxy", "--integration", "other")
    acme_only = create_key(gk, "--scope", "proxy", "--integration", "acme")
    gk.cli("environments", "create", "staging")
    staging = create_key(gk, "--scope", "admin", "--environment", "staging")
    before = oidc.stats()["api"]

    def call(key: str | None, target: str, method: str = "GET") -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, gk.base_url + target, headers=headers)

    r = call(None, f"/v1/proxy/{gid}/whoami")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert call("gk_nope_nope", f"/v1/proxy/{gid}/whoami").status_code == 401
    r = call(read_only, f"/v1/proxy/{gid}/whoami")
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert call(read_only, f"/v1/proxy/{gid}/echo/w", "POST").status_code == 403
    assert call(other_only, f"/v1/proxy/{gid}/whoami").status_code == 404
    assert call(staging, f"/v1/proxy/{gid}/whoami").status_code == 404
    for bad in ("x", "{" + gid + "}", "%00", gid.upper(), "00000000-0000-0000-0000-000000000000", "' OR 1=1--"):
        r = call(gk.admin_key, f"/v1/proxy/{bad}/whoami")
        assert r.status_code == 404, (bad, r.status_code)
        assert r.json()["code"] == "not_found"
    assert oidc.stats()["api"] == before
    assert call(acme_only, f"/v1/proxy/{gid}/whoami").status_code == 200


def test_integration_without_api_base_url(gk: Server, oidc: OidcServer) -> None:
    setup_oidc_integration(gk, oidc, "bare", api_base_url=None)
    gid = connect_grant(gk, oidc, "bare", "user-bare")
    with gk.client() as c:
        r = c.get(f"/v1/proxy/{gid}/whoami")
        assert r.status_code == 409 and r.json()["code"] == "proxy_not_configured"


def test_openapi_lists_the_proxy_once(gk: Server) -> None:
    with httpx.Client(base_url=gk.base_url) as c:
        spec = c.get("/openapi.json").json()
    paths = [p for p in spec["paths"] if p.startswith("/v1/proxy")]
    assert paths == ["/v1/proxy/{grant_id}/{path}"]
    ops = spec["paths"][paths[0]]
    assert set(ops) == {"get", "post", "put", "patch", "delete", "head", "options"}
    assert len({o["operationId"] for o in ops.values()}) == 7
