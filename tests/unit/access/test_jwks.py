"""The subject issuers' JWKS cache against a real loopback HTTP server (through the guarded session)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from grantkeeper.access.jwks import JwksCache
from grantkeeper.config import Settings
from grantkeeper.errors import ProviderUnavailable, UnsafeUrl
from grantkeeper.runtime import new_http_session

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Issuer:
    def __init__(self) -> None:
        self.kids = ["a"]
        self.hits = 0
        self.status = 200
        self.url = ""


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    state = Issuer()

    async def jwks(_: web.Request) -> web.Response:
        state.hits += 1
        if state.status != 200:
            return web.Response(status=state.status)
        return web.json_response({"keys": [{"kty": "oct", "kid": k} for k in state.kids]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/jwks"
    try:
        yield state
    finally:
        await runner.cleanup()


def kids(doc: dict[str, Any]) -> list[str]:
    return [k["kid"] for k in doc["keys"]]


async def test_cached_then_refetched_on_an_unknown_kid_at_most_once_per_interval(issuer: Issuer) -> None:
    http = new_http_session(Settings(allow_private_networks=True))
    clock = [1000.0]
    try:
        cache = JwksCache(http, allow_private=True, timeout=5, ttl=300, refetch_interval=30)
        cache._now = lambda: clock[0]  # type: ignore[method-assign]
        assert kids(await cache.get(issuer.url, kid="a")) == ["a"]
        assert kids(await cache.get(issuer.url, kid="a")) == ["a"]
        assert issuer.hits == 1
        issuer.kids = ["a", "b"]  # the issuer rotates
        # moments after the fetch an unknown kid does not refetch (forged kids cannot hammer)
        assert kids(await cache.get(issuer.url, kid="b")) == ["a"]
        assert issuer.hits == 1
        clock[0] += 31
        assert kids(await cache.get(issuer.url, kid="b")) == ["a", "b"]
        assert issuer.hits == 2
        assert kids(await cache.get(issuer.url, kid="nope")) == ["a", "b"]
        assert issuer.hits == 2
        clock[0] += 301  # stale: fetched again whatever the kid
        await cache.get(issuer.url, kid="a")
        assert issuer.hits == 3
    finally:
        await http.close()


async def test_failures_are_transient_and_private_targets_guarded(issuer: Issuer) -> None:
    http = new_http_session(Settings(allow_private_networks=True))
    try:
        issuer.status = 500
        cache = JwksCache(http, allow_private=True, timeout=5, ttl=300, refetch_interval=30)
        with pytest.raises(ProviderUnavailable):
            await cache.get(issuer.url, kid=None)
        strict = JwksCache(http, allow_private=False, timeout=5, ttl=300, refetch_interval=30)
        with pytest.raises(UnsafeUrl):
            await strict.get(issuer.url, kid=None)
        assert issuer.hits == 1
    finally:
        await http.close()
