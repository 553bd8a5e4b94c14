"""C5: the post-connect redirect allowlist (exact origin, path prefix by whole segments)."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper.errors import InvalidInput, ReturnToNotAllowed
from grantkeeper.returnurls import matches, require_allowed, validate_return_url

ALLOWED = ("https://ok.tld/done", "http://127.0.0.1:3000/cb", "https://app.ok.tld:8443/")


@pytest.mark.parametrize(
    "url",
    [
        "https://ok.tld/done",
        "https://ok.tld/done/",
        "https://ok.tld/done/step?x=1&y=2",
        "https://ok.tld:443/done",  # default port spelled out
        "https://OK.tld/done",  # host names are case-insensitive
        "http://127.0.0.1:3000/cb/x",
        "https://app.ok.tld:8443/anything/at/all",
        "https://app.ok.tld:8443",
    ],
)
def test_allowed(url: str) -> None:
    assert matches(url, ALLOWED)
    assert require_allowed(url, ALLOWED) == url


@pytest.mark.parametrize(
    "url",
    [
        "//evil.tld",
        "//evil.tld/done",
        "/\\evil.tld",
        "/\\evil.tld/done",
        "https://ok.tld\\@evil.tld/done",
        "https://ok.tld@evil.tld/done",
        "https://ok.tld:443@evil.tld/done",
        "https://user:pw@ok.tld/done",
        "https://ok.tld.evil.tld/done",
        "https://evil.tld/done",
        "https://evilok.tld/done",
        "javascript:alert(1)",
        "JavaScript://ok.tld/done%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "http://ok.tld/done",  # scheme mismatch
        "https://ok.tld:8443/done",  # port mismatch
        "http://127.0.0.1:3001/cb",
        "http://127.0.0.1/cb",
        "https://app.ok.tld/x",  # 443 is not 8443
        "https://ok.tld/donex",  # prefix by whole segments only
        "https://ok.tld/don",
        "https://ok.tld/Done",
        "https://ok.tld/",
        "https://ok.tld",
        "https://ok.tld/done/../admin",
        "https://ok.tld/done/..",
        "https://ok.tld/done/%2e%2e/admin",
        "https://ok.tld/done/%2E%2E/admin",
        "https://ok.tld/done/.%2e/admin",
        "https://ok.tld/done/%2e./admin",
        "https://ok.tld/done/./x",
        "https://ok.tld/done#frag",
        "https://ok.tld/done\t",
        "https://ok.tld/done\r\nSet-Cookie: x=1",
        " https://ok.tld/done",
        "https://ok.tld:99999/done",
        "https://ok.tld:abc/done",
        "",
        "done",
        "/done",
        "https://ok.tld/" + "a" * 2100,
    ],
)
def test_refused(url: str) -> None:
    assert not matches(url, ALLOWED)
    with pytest.raises(ReturnToNotAllowed):
        require_allowed(url, ALLOWED)


def test_nothing_matches_an_empty_allowlist() -> None:
    assert not matches("https://ok.tld/done", ())


def test_malformed_allowlist_entries_are_skipped() -> None:
    assert not matches("https://ok.tld/done", ("javascript:x", "//ok.tld/done", "https://u@ok.tld/done"))


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/oauth/done",
        "http://localhost:3000/cb",
        "http://127.0.0.1:8000/",
        "http://[::1]:8000/x",
    ],
)
def test_validate_return_url_accepts(url: str) -> None:
    assert validate_return_url(url, allow_private=False) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://app.example.com/done",  # plain http only for loopback
        "https://app.example.com/done#x",
        "https://u:p@app.example.com/done",
        "ftp://app.example.com/",
        "javascript:alert(1)",
        "//app.example.com/",
        "https://app.example.com\\@evil.tld/",
    ],
)
def test_validate_return_url_refuses(url: str) -> None:
    with pytest.raises(InvalidInput):
        validate_return_url(url, allow_private=False)


def test_validate_return_url_allows_http_with_private_networks() -> None:
    assert validate_return_url("http://app.internal/done", allow_private=True)


# ------------------------------------------------------------------ properties


def _browser_path(path: str) -> list[str]:
    """Where a browser ends up: dot segments (also ``%2e``) resolved."""
    decoded = "/".join("." if unquote(s) == "." else ".." if unquote(s) == ".." else s for s in path.split("/"))
    return [s for s in posixpath.normpath("/" + decoded).split("/") if s]


_SEGMENT = st.sampled_from(
    ["done", "donex", "x", "..", ".", "%2e%2e", "%2E.", ".%2e", "%2e", "", "a;b", "..;", "%2f", "done%2f..", "é"]
)
_HOST = st.sampled_from(
    ["ok.tld", "OK.TLD", "ok.tld.evil.tld", "evil.tld", "ok.tld@evil.tld", "evil.tld@ok.tld", "ok.tld:443", "ok.tld:444", "ok.tld\\@evil.tld", "ok.tld."]
)


@settings(max_examples=500, deadline=None)
@given(
    scheme=st.sampled_from(["https", "http", "HTTPS", "javascript", ""]),
    host=_HOST,
    segments=st.lists(_SEGMENT, max_size=6),
)
def test_property_a_match_never_leaves_origin_or_prefix(scheme: str, host: str, segments: list[str]) -> None:
    url = f"{scheme}://{host}/" + "/".join(segments) if scheme else f"//{host}/" + "/".join(segments)
    if not matches(url, ("https://ok.tld/done",)):
        return
    p = urlsplit(url)
    assert p.scheme.lower() == "https"
    assert (p.hostname or "") == "ok.tld"
    assert p.port in (None, 443)
    assert "@" not in p.netloc
    assert _browser_path(p.path)[:1] == ["done"]


@settings(max_examples=300, deadline=None)
@given(tail=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_~", min_size=1, max_size=8), max_size=5))
def test_property_plain_subpaths_always_match(tail: list[str]) -> None:
    url = "https://ok.tld/done/" + "/".join(tail)
    assert matches(url, ("https://ok.tld/done",))


@settings(max_examples=300, deadline=None)
@given(junk=st.text(max_size=200))
def test_property_never_raises_anything_but_return_to_not_allowed(junk: str) -> None:
    try:
        require_allowed(junk, ALLOWED)
    except ReturnToNotAllowed:
        pass
