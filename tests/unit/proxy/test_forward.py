"""Header filtering both ways and URL building of the proxy (no network)."""

from __future__ import annotations

import pytest

from grantkeeper.errors import InvalidProxyPath
from grantkeeper.providers.catalog import StampSpec
from grantkeeper.proxy.forward import request_headers, response_headers
from grantkeeper.proxy.routes import _Upstream

TOKEN = "at-SECRET/with+chars"


def _raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_request_headers_drop_credentials_routing_and_hop_by_hop() -> None:
    incoming = _raw(
        ("Host", "evil.tld"),
        ("Authorization", "Bearer gk_key"),
        ("Proxy-Authorization", "Basic x"),
        ("Cookie", "a=b"),
        ("X-Forwarded-Host", "evil.tld"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("Forwarded", "host=evil.tld"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-Grantkeeper-Trace", "1"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "hop"),
        ("Keep-Alive", "5"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"),
        ("Expect", "100-continue"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("X-Custom", "1"),
        ("X-Custom", "2"),
    )
    out = request_headers(incoming, StampSpec(), TOKEN)
    assert list(out.items()) == [
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("x-custom", "1"),
        ("x-custom", "2"),
        ("accept-encoding", "identity"),
        ("Authorization", f"Bearer {TOKEN}"),
    ]
    assert out.getall("x-custom") == ["1", "2"]
    assert out.getall("authorization") == [f"Bearer {TOKEN}"]


def test_request_headers_custom_and_query_stamps() -> None:
    spec = StampSpec(location="header", name="X-Shopify-Access-Token", format="{access_token}")
    out = request_headers(
        _raw(("X-Shopify-Access-Token", "mine"), ("Authorization", "Bearer gk"), ("Accept-Encoding", "gzip")),
        spec,
        TOKEN,
    )
    assert out.getall("x-shopify-access-token") == [TOKEN]
    assert "authorization" not in out and out["accept-encoding"] == "gzip"
    out = request_headers(_raw(("Authorization", "Bearer gk")), StampSpec(location="query", name="access_token"), TOKEN)
    assert "authorization" not in out and TOKEN not in str(out)


def test_response_headers_drop_cookies_hops_and_the_token() -> None:
    raw = _raw(
        ("Content-Type", "application/json"),
        ("Set-Cookie", "s=1"),
        ("Set-Cookie2", "s=1"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Alt-Svc", 'h3=":443"'),
        ("Date", "Mon"),
        ("Location", "https://api.example.com/x?access_token=at-SECRET%2Fwith%2Bchars"),
        ("X-Echo", f"Bearer {TOKEN}"),
        ("Retry-After", "7"),
        ("WWW-Authenticate", 'Bearer realm="x"'),
        ("Link", "<a>; rel=next"),
        ("Link", "<b>; rel=prev"),
    )
    out = response_headers(raw, TOKEN)
    assert out == [
        (b"content-type", b"application/json"),
        (b"retry-after", b"7"),
        (b"www-authenticate", b'Bearer realm="x"'),
        (b"link", b"<a>; rel=next"),
        (b"link", b"<b>; rel=prev"),
    ]


def test_upstream_url_stamps_query_and_stays_on_the_base() -> None:
    up = _Upstream(
        "https://api.example.com/v2?api-version=1",
        "users/@me",
        "a=1&access_token=callers",
        StampSpec(location="query", name="access_token", format="{access_token}"),
    )
    url = up.url(TOKEN)
    assert str(url) == (
        "https://api.example.com/v2/users/@me?api-version=1&a=1&access_token=at-SECRET%2Fwith%2Bchars"
    )
    assert url.host == "api.example.com" and up.host == "api.example.com"
    bearer = _Upstream("http://127.0.0.1:9/api", "", "", StampSpec())
    assert str(bearer.url(TOKEN)) == "http://127.0.0.1:9/api/"


def test_upstream_url_refuses_what_would_leave_the_base() -> None:
    # the normaliser runs first in real calls; this is the last line of defence
    with pytest.raises(InvalidProxyPath):
        _Upstream("https://api.example.com/v2", "../x", "", StampSpec()).url(TOKEN)
