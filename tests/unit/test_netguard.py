"""SSRF guard: where grantkeeper's outgoing requests may go (C13, §4 #31)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper.errors import UnsafeUrl
from grantkeeper.netguard import GuardedResolver, check_url, is_loopback_host, is_public_ip

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.1.2.3",
    ],
)
def test_non_public_ips(ip: str) -> None:
    assert not is_public_ip(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_ips(ip: str) -> None:
    assert is_public_ip(ipaddress.ip_address(ip))


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "app.localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["example.com", "localhost.example.com", "10.0.0.1", "8.8.8.8"])
def test_not_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "https://api.example.com:8443/token",
        "https://8.8.8.8/x",
        "https://[2606:4700:4700::1111]/x",
    ],
)
def test_public_https_allowed(url: str) -> None:
    assert check_url(url, allow_private=False) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/",  # plain http to a public host
        "https://127.0.0.1/",
        "https://localhost:8080/",
        "https://sub.localhost/",
        "https://[::1]/",
        "https://10.0.0.5/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/",
        "https://100.64.1.1/",
        "https://0.0.0.0/",
        "file:///etc/passwd",
        "ftp://example.com/",
        "gopher://example.com/",
        "javascript:alert(1)",
        "https://user:pw@api.example.com/",
        "https://api.example.com@evil.tld/",
        "https://@evil.tld/",
        "https:///path-only",
        "//evil.tld/",
        "https://api.example.com:0/",
        "https://api.example.com:99999/",
        "https://api.example.com:abc/",
        "https://api.example.com/\x00",
        "https://api.example.com/ space",
        "https://api.example.com/\r\nX: y",
        "https://api.example.com/" + "a" * 2100,
    ],
)
def test_unsafe_urls_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/hook", "http://localhost/x", "https://10.0.0.5/", "http://[::1]:80/"])
def test_private_allowed_in_development(url: str) -> None:
    assert check_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "https://u:p@127.0.0.1/"])
def test_never_allowed_even_in_development(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, allow_private=True)


def test_public_http_refused_even_in_development_when_https_required() -> None:
    with pytest.raises(UnsafeUrl):
        check_url("http://api.example.com/", allow_private=True)
    assert check_url("http://api.example.com/", allow_private=False, require_https=False)


def test_error_names_what() -> None:
    with pytest.raises(UnsafeUrl) as info:
        check_url("https://10.0.0.1/", allow_private=False, what="token_url")
    assert "token_url" in str(info.value)
    assert info.value.status == 422


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_property_check_url_refuses_every_non_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    url = f"https://{host}/x"
    if is_public_ip(ip):
        assert check_url(url, allow_private=False) == url
    else:
        with pytest.raises(UnsafeUrl):
            check_url(url, allow_private=False)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_property_check_url_raises_only_unsafe_url(junk: str) -> None:
    try:
        check_url(junk, allow_private=False)
    except UnsafeUrl:
        pass


# ------------------------------------------------------------------ DNS rebinding: the resolver


class _FakeResolver:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[dict[str, Any]]:
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.addrs
        ]

    async def close(self) -> None:
        return None


def _guarded(allow_private: bool, addrs: list[str]) -> GuardedResolver:
    r = GuardedResolver(allow_private)
    r._inner = _FakeResolver(addrs)  # type: ignore[assignment]
    return r


async def test_resolver_drops_private_addresses() -> None:
    r = _guarded(False, ["10.0.0.1", "93.184.216.34", "127.0.0.1"])
    out = await r.resolve("api.example.com", 443)
    assert [x["host"] for x in out] == ["93.184.216.34"]


async def test_resolver_refuses_names_resolving_only_to_private() -> None:
    r = _guarded(False, ["169.254.169.254", "::1"])
    with pytest.raises(OSError):
        await r.resolve("rebind.example.com", 443)


async def test_resolver_allows_private_in_development() -> None:
    r = _guarded(True, ["127.0.0.1"])
    assert [x["host"] for x in await r.resolve("localhost", 80)] == ["127.0.0.1"]


# ------------------------------------------------------------------ IP literals: the connector


async def test_ip_literal_targets_go_through_the_guard() -> None:
    """aiohttp never calls the resolver for an IP literal: the connector must guard it too."""
    import aiohttp
    from aiohttp import web

    from grantkeeper.config import Settings
    from grantkeeper.runtime import new_http_session

    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        strict = new_http_session(Settings(allow_private_networks=False))
        try:
            for url in (f"http://127.0.0.1:{port}/meta", f"http://[::ffff:127.0.0.1]:{port}/meta"):
                with pytest.raises((OSError, aiohttp.ClientError)):
                    async with strict.get(url) as resp:
                        await resp.read()
        finally:
            await strict.close()
        assert hits == []
        dev = new_http_session(Settings(allow_private_networks=True))
        try:
            async with dev.get(f"http://127.0.0.1:{port}/ok") as resp:
                assert resp.status == 200
        finally:
            await dev.close()
        assert hits == ["/ok"]
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ discovered URLs


class _Doc:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc


def _cache_serving(doc: dict[str, Any], *, allow_private: bool) -> Any:
    from grantkeeper.oauth.discovery import DiscoveryCache

    class Served(DiscoveryCache):
        async def _get_json(self, url: str) -> dict[str, Any]:
            return dict(doc)

    return Served(None, allow_private=allow_private, timeout=5)  # type: ignore[arg-type]


_ISSUER = "https://idp.example.com"
_GOOD = {
    "issuer": _ISSUER,
    "authorization_endpoint": f"{_ISSUER}/auth",
    "token_endpoint": f"{_ISSUER}/token",
    "jwks_uri": f"{_ISSUER}/jwks",
    "userinfo_endpoint": f"{_ISSUER}/me",
    "revocation_endpoint": f"{_ISSUER}/revoke",
}


@pytest.mark.parametrize("field", ["jwks_uri", "userinfo_endpoint", "revocation_endpoint"])
@pytest.mark.parametrize(
    "bad", ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.1/x", "file:///etc/passwd", "https://u:p@idp.example.com/"]
)
async def test_discovered_urls_go_through_the_guard(field: str, bad: str) -> None:
    cache = _cache_serving({**_GOOD, field: bad}, allow_private=False)
    with pytest.raises(UnsafeUrl) as info:
        await cache.metadata(_ISSUER)
    assert field.split("_")[0] in str(info.value)


async def test_discovered_urls_pass_when_public() -> None:
    meta = await _cache_serving(_GOOD, allow_private=False).metadata(_ISSUER)
    assert meta.jwks_uri == f"{_ISSUER}/jwks" and meta.revocation_endpoint == f"{_ISSUER}/revoke"


async def test_discovered_private_urls_allowed_in_development() -> None:
    doc = {**_GOOD, "jwks_uri": "http://127.0.0.1:9/jwks"}
    meta = await _cache_serving(doc, allow_private=True).metadata(_ISSUER)
    assert meta.jwks_uri == "http://127.0.0.1:9/jwks"
