"""Where outgoing requests may go (SSRF defence).

Checked twice: when a URL is configured or discovered (``check_url``) and when a
connection is opened (``GuardedConnector`` with ``GuardedResolver``), so DNS cannot
point an allowed name at a private address later. aiohttp never asks the resolver
about an IP literal, so the connector checks those itself.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from grantkeeper.errors import UnsafeUrl

__all__ = [
    "GuardedConnector",
    "GuardedResolver",
    "check_url",
    "is_loopback_host",
    "is_public_ip",
]


def is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"))
    )


def is_loopback_host(host: str) -> bool:
    h = host.strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_url(
    url: str, *, allow_private: bool, what: str = "URL", require_https: bool = True
) -> str:
    """Validate an absolute http(s) URL that grantkeeper will call; return it normalised.

    Refuses userinfo, non-http(s) schemes, and (unless ``allow_private``) hosts
    that are IP literals outside the public range or loopback names. Plain
    http is refused for public hosts when ``require_https``.
    """
    if len(url) > 2000 or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise UnsafeUrl(f"{what} contains characters that are not allowed")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"{what} must use http or https")
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl(f"{what} must name a host and carry no credentials")
    if port == 0:
        raise UnsafeUrl(f"{what} has an invalid port")
    private = is_loopback_host(host)
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        private = private or not is_public_ip(ip)
    except ValueError:
        pass
    if private and not allow_private:
        raise UnsafeUrl(
            f"{what} points at a loopback or private address "
            "(set GRANTKEEPER_ALLOW_PRIVATE_NETWORKS=1 for development)"
        )
    if parts.scheme == "http" and require_https and not (private and allow_private):
        raise UnsafeUrl(f"{what} must use https")
    return url


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops non-public addresses unless private networks are allowed."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        safe = [r for r in results if is_public_ip(ipaddress.ip_address(r["host"]))]
        if not safe:
            raise OSError(f"{host} resolves only to non-public addresses")
        return safe

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(TCPConnector):
    """A TCP connector whose every target address passes the guard, IP literals included.

    aiohttp resolves an IP literal host itself, without the resolver; this checks the
    addresses ``_resolve_host`` hands back whatever their source (redirects too).
    """

    def __init__(self, *, allow_private: bool, **kw: Any) -> None:
        super().__init__(resolver=GuardedResolver(allow_private), **kw)
        self._gk_allow_private = allow_private

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Any] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces)
        if self._gk_allow_private:
            return results
        safe = [r for r in results if is_public_ip(ipaddress.ip_address(r["host"]))]
        if not safe:
            raise OSError(f"{host} is not a public address")
        return safe
