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
