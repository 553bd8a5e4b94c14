"""The token read's fast path answers exactly as the full stack does (issue 18).

Two servers on one database, one with ``GRANTKEEPER_TOKEN_FAST_PATH=1`` (the default) and
one with ``0``; every request below goes to both and the answers are compared: status,
the headers that carry meaning, and the problem+json body (a 500's log reference aside).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.gk import Server, free_port, new_database, server_env, start_server

HEADERS = ("content-type", "cache-control", "pragma", "retry-after", "www-authenticate")


@pytest.fixture
def pair(backend: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    db = new_database(backend, tmp_path)
    port_a, port_b = free_port(), free_port()
    common = {"GRANTKEEPER_RATE_LIMIT_PER_SECOND": "0.001", "GRANTKEEPER_RATE_LIMIT_BURST": "40"}
    env_a = server_env(db, port_a, tmp_path, GRANTKEEPER_TOKEN_FAST_PATH="1", **common)
    a = start_server(env_a, port_a, tmp_path / "fast.log", db, worker=False)
    env_b = server_env(db, port_b, tmp_path, GRANTKEEPER_TOKEN_FAST_PATH="0", **common)
    env_b["GRANTKEEPER_MASTER_KEYS"] = env_a["GRANTKEEPER_MASTER_KEYS"]
    b = start_server(env_b, port_b, tmp_path / "full.log", db, worker=False, admin_key=a.admin_key)
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()
        db.drop()


def _shape(r: httpx.Response) -> dict[str, Any]:
    body: Any
    try:
        body = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("expires_in", "expires_at")}
        if body.get("code") == "internal_error":
            body["detail"] = "(ref)"
        if r.status_code in (429, 503):
            # the second server sees the state the first left (backoff, bucket): same kind of
            # answer, wording and wait may differ
            body.pop("detail", None)
    headers = {h: r.headers.get(h) for h in HEADERS}
    if headers["retry-after"] is not None:
        assert headers["retry-after"].isdigit()
        headers["retry-after"] = "n"
    return {"status": r.status_code, "headers": headers, "body": body}


def _raw(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    status_line = out.split(b"\r\n", 1)[0]
    return status_line + b"\n" + out.split(b"\r\n\r\n", 1)[-1]


def test_every_answer_is_the_same_with_and_without_the_fast_path(pair: tuple[Server, Server]) -> None:
    fast, full = pair
    with fast.client() as c:
        c.put(
            "/v1/integrations/plain",
            json={
                "provider": "oauth2",
                "client_id": "cid",
                "client_secret": "csecret",
                "return_urls": ["https://app.example/done"],
                # nothing listens there: a refresh is a transient provider failure (503)
                "endpoints": {"authorization_url": "http://127.0.0.1:9/authorize", "token_url": "http://127.0.0.1:9/token"},
            },
        ).raise_for_status()

        def grant(user: str, *, expired: bool = False) -> str:
            body: dict[str, Any] = {"integration_id": "plain", "user_id": user, "refresh_token": "rt-" + user, "access_token": "at-" + user, "verify": False}
            body["expires_at"] = "2020-01-01T00:00:00Z" if expired else "2099-01-01T00:00:00Z"
            r = c.post("/v1/grants", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        good, stale, gone = grant("u-good"), grant("u-stale", expired=True), grant("u-gone")
        assert c.delete(f"/v1/grants/{gone}").status_code == 200
    ro = json.loads(fast.cli("api-keys", "create", "--name", "ro", "--scope", "grants:read", "--json").stdout)["key"]
    missing = "00000000-0000-4000-8000-000000000000"
    admin = {"Authorization": f"Bearer {fast.admin_key}"}
    cases: list[tuple[str, dict[str, Any]]] = [
        (good, {"json": {}}),
        (good, {"json": {"min_ttl": 60}}),
        (good, {"json": {"min_ttl": -1}}),
        (good, {"json": {"refresh_token": "x"}}),
        (good, {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        (good, {"content": b"min_ttl=5", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        (good, {"content": b"{" + b" " * 2_000_000 + b"}", "headers": {"content-type": "application/json"}}),
        (good, {"json": {}, "params": {"min_ttl": "30"}}),
        (good, {"json": {}, "headers": {"Authorization": "Bearer gk_nope_nope"}}),
        (good, {"json": {}, "headers": {"Authorization": ""}}),
        (good, {"json": {}, "headers": {"Authorization": "", "X-API-Key": fast.admin_key}}),
        (good, {"json": {}, "headers": {"Authorization": f"Bearer {ro}"}}),
        (missing, {"json": {}}),
        (gone, {"json": {}}),
        (stale, {"json": {}}),
        ("not-a-grant-id-of-the-right-length!!", {"json": {}}),
    ]
    for gid, kw in cases:
        kw = dict(kw)
        headers = {**admin, **kw.pop("headers", {})}
        headers = {k: v for k, v in headers.items() if v != ""}
        answers = []
        for server in (fast, full):
            with httpx.Client(base_url=server.base_url, timeout=30) as h:
                answers.append(_shape(h.post(f"/v1/grants/{gid}/token", headers=headers, **kw)))
        assert answers[0] == answers[1], (gid, kw.keys(), answers)

    # framing the HTTP client would not send: both Content-Length and Transfer-Encoding
    smuggle = (
        f"POST /v1/grants/{good}/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fast.admin_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        "2\r\n{}\r\n0\r\n\r\n"
    ).encode()
    assert _raw(fast.base_url, smuggle) == _raw(full.base_url, smuggle)

    # the rate limit (shared through the database): both answer 429 with Retry-After alike
    last: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        last = [
            _shape(httpx.post(f"{s.base_url}/v1/grants/{good}/token", headers=admin, json={}))
            for s in (fast, full)
        ]
        if all(a["status"] == 429 for a in last):
            break
    assert last[0]["status"] == last[1]["status"] == 429
    assert last[0]["body"] == last[1]["body"]
    assert last[0]["headers"]["retry-after"] and last[1]["headers"]["retry-after"]
    # the fast path still writes its access-log line (never the query string)
    assert f"POST /v1/grants/{good}/token 200" in fast.log_text()
