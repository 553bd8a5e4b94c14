"""Per-API-key rate limits (issue 8.4): token bucket in the database, 429 + Retry-After.

Buckets are shared by every process on one database; the arithmetic is checked directly
against both backends, the HTTP behaviour against real server processes.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from tests.support.gk import (
    Server,
    WebhookSink,
    free_port,
    master_key,
    new_database,
    running_server,
    start_server,
)

from grantkeeper.config import Settings
from grantkeeper.ratelimit import take
from grantkeeper.store.db import create_engine
from grantkeeper.store.migrate import upgrade

RETURN = "https://app.example/done"


def _integration(server: Server) -> None:
    with server.client() as c:
        r = c.put(
            "/v1/integrations/rl",
            json={
                "provider": "oauth2",
                "client_id": "cid",
                "client_secret": "csecret",
                "scopes": ["read"],
                "return_urls": [RETURN],
                "endpoints": {
                    "authorization_url": "https://idp.example/authorize",
                    "token_url": "https://idp.example/token",
                },
            },
        )
        assert r.status_code in (200, 201), r.text


def _new_key(server: Server, *scopes: str) -> str:
    args = ["api-keys", "create", "--name", "rl", "--json"]
    for s in scopes or ("admin",):
        args += ["--scope", s]
    out = json.loads(server.cli(*args).stdout)
    return str(out["key"])


def _session(c: httpx.Client) -> httpx.Response:
    return c.post(
        "/v1/connect/sessions",
        json={"integration_id": "rl", "user_id": "u1", "return_to": RETURN},
    )


def _assert_429(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    retry = int(r.headers["retry-after"])
    assert retry >= 1
    return retry


@pytest.fixture
def limited(backend: str, tmp_path: Path) -> Iterator[Server]:
    with running_server(
        backend,
        tmp_path,
        worker=False,
        GRANTKEEPER_RATE_LIMIT_PER_SECOND="0.5",
        GRANTKEEPER_RATE_LIMIT_BURST="3",
    ) as server:
        yield server


def test_connect_sessions_are_limited_per_key(limited: Server) -> None:
    _integration(limited)
    with limited.client() as c:
        assert [_session(c).status_code for _ in range(3)] == [201, 201, 201]
        retry = _assert_429(_session(c))
        assert retry <= 2  # one token at 0.5/s
    # another key has its own bucket
    with limited.client(_new_key(limited, "connect")) as c:
        assert _session(c).status_code == 201
    # the budget comes back with time
    time.sleep(retry + 0.2)
    with limited.client() as c:
        assert _session(c).status_code == 201


def test_token_endpoint_is_limited_before_the_grant_is_looked_up(limited: Server) -> None:
    gid = str(uuid.uuid4())
    with limited.client() as c:
        codes = [c.post(f"/v1/grants/{gid}/token", json={}).status_code for _ in range(3)]
        assert codes == [404, 404, 404]
        _assert_429(c.post(f"/v1/grants/{gid}/token", json={}))
        # the classes have separate buckets: connect sessions still work
        _integration(limited)
        assert _session(c).status_code == 201


def test_credentials_share_the_token_budget(limited: Server) -> None:
    """``/credentials`` hands out the same secrets as ``/token``: a key held to its token
    budget must not get around it there (they spend one bucket)."""
    gid = str(uuid.uuid4())
    with limited.client() as c:
        codes = [c.post(f"/v1/grants/{gid}/credentials", json={}).status_code for _ in range(2)]
        assert codes == [404, 404]
        assert c.post(f"/v1/grants/{gid}/token", json={}).status_code == 404
        _assert_429(c.post(f"/v1/grants/{gid}/credentials", json={}))
        _assert_429(c.post(f"/v1/grants/{gid}/token", json={}))


def test_unauthenticated_requests_do_not_spend_a_keys_budget(limited: Server) -> None:
    gid = str(uuid.uuid4())
    with httpx.Client(base_url=limited.base_url) as anon:
        for _ in range(10):
            assert anon.post(f"/v1/grants/{gid}/token", json={}).status_code == 401
    with limited.client() as c:
        assert c.post(f"/v1/grants/{gid}/token", json={}).status_code == 404


def test_parallel_requests_never_exceed_the_burst(backend: str, tmp_path: Path) -> None:
    with running_server(
        backend,
        tmp_path,
        worker=False,
        GRANTKEEPER_RATE_LIMIT_PER_SECOND="0.001",
        GRANTKEEPER_RATE_LIMIT_BURST="5",
    ) as server:
        gid = str(uuid.uuid4())

        async def burst() -> list[int]:
            async with httpx.AsyncClient(
                base_url=server.base_url,
                headers={"Authorization": f"Bearer {server.admin_key}"},
                timeout=30,
            ) as c:
                rs = await asyncio.gather(
                    *(c.post(f"/v1/grants/{gid}/token", json={}) for _ in range(40))
                )
                return [r.status_code for r in rs]

        codes = asyncio.run(burst())
        assert sorted(set(codes)) == [404, 429]
        assert codes.count(404) == 5


def test_buckets_are_shared_across_processes(backend: str, tmp_path: Path) -> None:
    with running_server(
        backend,
        tmp_path,
        worker=False,
        GRANTKEEPER_RATE_LIMIT_PER_SECOND="0.001",
        GRANTKEEPER_RATE_LIMIT_BURST="4",
    ) as first:
        port = free_port()
        second = start_server(
            dict(first.env),
            port,
            tmp_path / f"second-{port}.log",
            first.db,
            worker=False,
            admin_key=first.admin_key,
        )
        try:
            gid = str(uuid.uuid4())
            codes = []
            for i in range(8):
                with (first if i % 2 else second).client() as c:
                    codes.append(c.post(f"/v1/grants/{gid}/token", json={}).status_code)
            assert codes.count(404) == 4 and codes.count(429) == 4, codes
        finally:
            second.stop()


def test_disabled_by_default(gk: Server) -> None:
    gid = str(uuid.uuid4())
    with gk.client() as c:
        assert all(c.post(f"/v1/grants/{gid}/token", json={}).status_code == 404 for _ in range(30))


# ---------------------------------------------------------------- the bucket arithmetic


def test_bucket_arithmetic(backend: str, tmp_path: Path) -> None:
    db = new_database(backend, tmp_path)
    try:
        upgrade(db.url)
        settings = Settings(database_url=db.url, master_keys=SecretStr(master_key()))

        async def go() -> None:
            engine = create_engine(settings)
            try:

                async def t(now: float, rate: float = 1.0, burst: int = 3) -> float | None:
                    async with engine.begin() as conn:
                        return await take(conn, "b", now=now, rate=rate, burst=burst)

                t0 = 1000.0
                # a new bucket starts full
                assert [await t(t0) for _ in range(3)] == [None, None, None]
                wait = await t(t0)
                assert wait is not None and 0.99 <= wait <= 1.0
                # denials do not spend: after exactly one second one token is there
                assert await t(t0 + 0.5) is not None
                assert await t(t0 + 1.0) is None
                assert await t(t0 + 1.0) is not None
                # refill is capped at the burst
                assert [await t(t0 + 1000) for _ in range(3)] == [None, None, None]
                assert await t(t0 + 1000) is not None
                # a clock behind the stored time (another host) never creates tokens
                assert await t(t0 - 500) is not None
                assert await t(t0 + 1001.0) is None
            finally:
                await engine.dispose()

        asyncio.run(go())
    finally:
        db.drop()


def test_proxy_is_limited_per_key(limited: Server, webhook_sink: WebhookSink) -> None:
    """The proxy shares the scheme: its own bucket per key, 429 + Retry-After once spent."""
    base = webhook_sink.url.rsplit("/", 1)[0]
    with limited.client() as c:
        r = c.put(
            "/v1/integrations/px",
            json={
                "provider": "oauth2",
                "client_id": "cid",
                "client_secret": "csecret",
                "scopes": ["read"],
                "return_urls": [RETURN],
                "endpoints": {
                    "authorization_url": "https://idp.example/authorize",
                    "token_url": "https://idp.example/token",
                },
                "api_base_url": base,
            },
        )
        assert r.status_code in (200, 201), r.text
        g = c.post(
            "/v1/grants",
            json={
                "integration_id": "px",
                "user_id": "u",
                "refresh_token": "rt",
                "access_token": "at",
                "expires_at": "2099-01-01T00:00:00Z",
                "verify": False,
            },
        )
        assert g.status_code == 201, g.text
        gid = g.json()["id"]
        codes = [c.post(f"/v1/proxy/{gid}/hooks", json={"n": i}).status_code for i in range(3)]
        assert codes == [204, 204, 204], codes
        _assert_429(c.post(f"/v1/proxy/{gid}/hooks", json={"n": 4}))
    assert len(webhook_sink.received) == 3
