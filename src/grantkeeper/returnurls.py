"""The post-connect redirect allowlist (RFC 9700 4.11.1): exact origin, path prefix by whole segments."""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

from grantkeeper.errors import InvalidInput, ReturnToNotAllowed
from grantkeeper.netguard import is_loopback_host

__all__ = ["matches", "require_allowed", "validate_return_url"]

_DEFAULT_PORT = {"http": 80, "https": 443}


def _parse(url: str) -> SplitResult | None:
    if (
        not url
        or len(url) > 2000
        or "\\" in url
        or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url)
    ):
        return None
    try:
        p = urlsplit(url)
        p.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        return None
    if p.scheme not in ("http", "https") or not p.hostname or "@" in p.netloc:
        return None
    return p


def _origin(p: SplitResult) -> tuple[str, str, int]:
    return (p.scheme, (p.hostname or "").lower(), p.port or _DEFAULT_PORT[p.scheme])


def validate_return_url(url: str, *, allow_private: bool) -> str:
    p = _parse(url)
    if p is None or p.fragment:
        raise InvalidInput(
            f"return URL {url[:100]!r} must be an absolute http(s) URL without credentials or fragment"
        )
    if p.scheme == "http" and not (allow_private or is_loopback_host(p.hostname or "")):
        raise InvalidInput("return URLs must use https (http is allowed for loopback only)")
    return url


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _has_dot_segment(path: str) -> bool:
    """``.``/``..`` including the percent-encoded forms browsers also resolve (``%2e%2e``)."""
    return any(unquote(s) in (".", "..") for s in path.split("/"))


def matches(return_to: str, allowed: tuple[str, ...] | list[str]) -> bool:
    r = _parse(return_to)
    if r is None or r.fragment:
        return False
    for a in allowed:
        ap = _parse(a)
        if ap is None or _origin(ap) != _origin(r):
            continue
        prefix = _segments(ap.path)
        if _segments(r.path)[: len(prefix)] == prefix and not _has_dot_segment(r.path):
            return True
    return False


def require_allowed(return_to: str, allowed: tuple[str, ...] | list[str]) -> str:
    if not matches(return_to, allowed):
        raise ReturnToNotAllowed("return_to is not within the integration's return_urls")
    return return_to
