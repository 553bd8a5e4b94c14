"""The proxy path normaliser: examples, then properties fuzzed with hypothesis.

The property that matters: whatever the caller sends, the URL the proxy calls has the
base URL's origin and stays under its path, however many times the upstream decodes it.
"""

from __future__ import annotations

import posixpath
import unicodedata
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grantkeeper.errors import InvalidProxyPath
from grantkeeper.proxy.paths import (
    join_url,
    normalise_path,
    normalise_query,
    with_query_param,
)

BASES = [
    "https://api.example.com",
    "https://api.example.com/",
    "https://api.example.com/v1",
    "https://api.example.com/v1/",
    "http://127.0.0.1:8080/api",
    "https://api.example.com/a/b?api-version=2",
]


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("users", "users"),
        ("users/", "users/"),
        ("users/@me", "users/@me"),  # Discord
        ("images:annotate", "images:annotate"),  # Google
        ("projects/group%2Fproject/issues", "projects/group%2Fproject/issues"),  # GitLab
        ("a%2fb", "a%2Fb"),
        ("files/100%25", "files/100%25"),
        ("q/a b".replace(" ", "%20"), "q/a%20b"),
        ('x/"<>^`{|}', "x/%22%3C%3E%5E%60%7B%7C%7D"),
        ("x/#frag", "x/%23frag"),
        ("a;b=c/d", "a;b=c/d"),
        ("a/...x/b", "a/...x/b"),
        ("a/.well-known", "a/.well-known"),
        ("a/b.json", "a/b.json"),
    ],
)
def test_accepted(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected
    assert normalise_path(expected) == expected


@pytest.mark.parametrize(
    "raw",
    [
        # traversal, plain and encoded (SECURITY.md case 18)
        "..",
        "../x",
        "a/../../x",
        "a/..",
        ".",
        "./x",
        "a/./b",
        "%2e%2e/x",
        "%2E%2E%2Fx",
        "a%2f..%2f..%2fx",
        "%2e./x",
        ".%2e/x",
        "%252e%252e/x",
        "%25252e%25252e/x",
        "a/%252e%252e%252f%252e%252e/x",
        "..;/x",
        "a/..;jsessionid=1/x",
        "%2e%2e;/x",
        "...",
        "a/..../b",
        "a/.. /b",
        "a/%2e%2e%20/b",
        "%c0%ae%c0%ae/x",  # overlong UTF-8 '.'
        "%ef%bc%8e%ef%bc%8e/x",  # fullwidth '．．' (NFKC -> '..')
        "..\\x",
        "a\\..\\x",
        "a%5c..%5cx",
        "a%255c..%255cx",
        # another host (case 19)
        "/evil.tld",
        "//evil.tld",
        "/%2fevil.tld",
        "%2f%2fevil.tld",
        "%2F%2Fevil.tld/x",
        "https://evil.tld",
        "https:/evil.tld",
        "https:evil.tld",
        "HTTPS://evil.tld",
        "%68ttps://evil.tld",
        "https%3a%2f%2fevil.tld",
        "javascript:alert(1)",
        "@evil.tld",
        "%40evil.tld",
        "user@evil.tld/x",
        "a//b",
        "a/%2f/b",
        # bytes
        "a\x00b",
        "a%00b",
        "a%2500b",
        "a\r\nSet-Cookie:x",
        "a%0d%0aSet-Cookie:x",
        "a%250d%250aSet-Cookie:x",
        "a\tb",
        "a b",
        "caf\xe9",
        "a%",
        "a%2",
        "a%zz",
        "a%e2%80%a8b",  # U+2028
        "%2525252525252e",  # too deep
        "x" * 5000,
    ],
)
def test_refused(raw: str) -> None:
    with pytest.raises(InvalidProxyPath):
        normalise_path(raw)


def test_join_keeps_origin_and_base_path() -> None:
    assert join_url("https://api.example.com/v1/", "users/@me", "a=1") == (
        "https://api.example.com/v1/users/@me?a=1"
    )
    assert join_url("https://api.example.com", "", "") == "https://api.example.com/"
    assert join_url("https://api.example.com/x?v=2#f", "y", "a=1") == (
        "https://api.example.com/x/y?v=2&a=1"
    )


@pytest.mark.parametrize(
    "base", ["ftp://x/y", "https://u:p@api.example.com", "/relative", "https:///x", "https://a b/"]
)
def test_join_refuses_bad_bases(base: str) -> None:
    with pytest.raises(ValueError):
        join_url(base, "x", "")


def test_query_is_checked_and_escaped() -> None:
    assert normalise_query("a=1&b=%20x") == "a=1&b=%20x"
    assert normalise_query("a=1#x") == "a=1%23x"
    assert normalise_query("q=<x>") == "q=%3Cx%3E"
    for bad in ("a=\x00", "a=%", "a=%g0", "a=\r\n", "a=\xe9"):
        with pytest.raises(InvalidProxyPath):
            normalise_query(bad)


def test_query_stamp_replaces_callers_param() -> None:
    assert with_query_param("", "access_token", "t/k+n") == "access_token=t%2Fk%2Bn"
    assert with_query_param("a=1&access_token=mine&access%5Ftoken=x&b", "access_token", "T") == (
        "a=1&b&access_token=T"
    )


# ---------------------------------------------------------------- properties

# text built from the pieces attacks are made of, plus anything at all
_PIECES = st.sampled_from(
    [
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%25",
        "%252e",
        "%252f",
        "%5c",
        "\\",
        ";",
        "@",
        ":",
        "%40",
        "%3a",
        "https:",
        "evil.tld",
        "a",
        "b",
        "%00",
        "%c0%ae",
        "%ef%bc%8e",
        "?",
        "#",
        "%",
        " ",
        "~",
    ]
)
_ATTACKS = st.lists(_PIECES, max_size=12).map("".join)
_ANY = st.text(max_size=60)


def _decodings(path: str) -> list[str]:
    out = [path]
    for _ in range(6):
        nxt = unquote(out[-1], errors="replace")
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out


def _assert_confined(base: str, rel: str) -> None:
    url = join_url(base, rel, "")
    b, u = urlsplit(base), urlsplit(url)
    assert (u.scheme, u.netloc) == (b.scheme, b.netloc)
    assert u.fragment == ""
    base_path = b.path.rstrip("/") + "/"
    assert u.path.startswith(base_path)
    for decoded in _decodings(u.path):
        for form in (decoded, unicodedata.normalize("NFKC", decoded)):
            assert "\\" not in form
            assert not any(ord(c) < 0x20 for c in form)
            resolved = posixpath.normpath(form)
            assert resolved + "/" == base_path or resolved.startswith(base_path), (rel, form)
            tail = form[len(base_path) :]
            assert not tail.startswith("/") and "//" not in tail
            first = tail.split("/", 1)[0]
            assert "@" not in first


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(_ATTACKS, _ANY), base=st.sampled_from(BASES))
@example(raw="..%2f..%2f", base=BASES[2])
@example(raw="%252e%252e%252f", base=BASES[2])
def test_result_always_stays_under_the_base_path(raw: str, base: str) -> None:
    try:
        rel = normalise_path(raw)
    except InvalidProxyPath:
        return
    _assert_confined(base, rel)
    assert normalise_path(rel) == rel  # idempotent


@settings(max_examples=1000)
@given(raw=st.one_of(_ATTACKS, _ANY))
def test_query_never_breaks_out(raw: str) -> None:
    try:
        q = normalise_query(raw)
    except InvalidProxyPath:
        return
    url = join_url("https://api.example.com/v1", "x", q)
    parts = urlsplit(url)
    assert parts.netloc == "api.example.com" and parts.path == "/v1/x" and parts.fragment == ""


@settings(max_examples=500)
@given(
    segments=st.lists(
        st.text(
            alphabet=st.characters(whitelist_categories=("L", "N")) | st.sampled_from("-_~"),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=5,
    ),
    trailing_slash=st.booleans(),
)
def test_ordinary_paths_pass_unchanged(segments: list[str], trailing_slash: bool) -> None:
    """Names in any script (percent-encoded by the caller) are forwarded as sent."""
    raw = "/".join(quote(s, safe="") for s in segments) + ("/" if trailing_slash else "")
    assert normalise_path(raw) == raw
