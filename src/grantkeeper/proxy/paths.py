"""Where a proxied call may go: the caller's path and query, confined under the API base URL.

Pure functions, no I/O (fuzzed by ``tests/unit/proxy/test_paths.py``).

The path arrives still percent-encoded (the request's ``raw_path``) and is forwarded in
that form, so an encoded ``%2F`` inside a segment (GitLab's ``group%2Fproject``) stays
one segment. The upstream URL is built structurally: the base URL's scheme and
authority, the base path, ``/``, then the checked path. Nothing the caller sends is
ever parsed as a URL, so it cannot name a host.

Refused with ``InvalidProxyPath`` (400 ``invalid_proxy_path``):

- control characters and NUL, non-ASCII bytes (send them percent-encoded), backslashes,
  and ``%`` not followed by two hex digits;
- a leading ``/`` (``//evil.tld``) and empty segments (``a//b``); a trailing ``/`` is kept;
- any segment made only of dots (``.``, ``..``, ``...``), also with ``;params``
  (``..;/``), checked in the raw form, after every round of percent-decoding
  (``%2e%2e``, ``%252e%252e``), after NFKC (fullwidth ``．．``) and with overlong
  UTF-8 (``%c0%ae``) refused outright;
- a first segment that starts with a URL scheme (``https:``, ``javascript:``) or holds
  ``@`` (``@evil.tld``): later segments may hold ``@`` and ``:`` (Discord's
  ``users/@me``, Google's ``images:annotate``) because the authority is never built from
  the caller's text;
- anything still changing after four rounds of decoding, and paths over 4 KiB.

Characters outside RFC 3986 ``pchar`` (``"<>^`{|}#`` and the like) are percent-encoded.
"""

from __future__ import annotations

import re
import string
import unicodedata
from urllib.parse import quote, unquote_plus, unquote_to_bytes, urlsplit

from grantkeeper.errors import InvalidProxyPath

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_QUERY_LENGTH",
    "join_url",
    "normalise_path",
    "normalise_query",
    "with_query_param",
]

MAX_PATH_LENGTH = 4096
MAX_QUERY_LENGTH = 8192
_MAX_DECODE_ROUNDS = 4

_HEX = frozenset(string.hexdigits)
_UNRESERVED = string.ascii_letters + string.digits + "-._~"
_PCHAR = frozenset(_UNRESERVED + "!$&'()*+,;=" + ":@")
_PATH_CHARS = _PCHAR | {"/"}
_QUERY_CHARS = _PCHAR | {"/", "?"}

#: schemes a first segment may not start with (``https:evil.tld``); ``images:annotate`` is fine
_SCHEMES = frozenset(
    {
        "http",
        "https",
        "ws",
        "wss",
        "ftp",
        "ftps",
        "sftp",
        "file",
        "gopher",
        "dict",
        "ldap",
        "ldaps",
        "jar",
        "netdoc",
        "javascript",
        "vbscript",
        "data",
        "blob",
        "mailto",
    }
)
_SCHEME_PREFIX = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*)\s*:")


def _encode(raw: str, allowed: frozenset[str], what: str) -> str:
    """Check ``raw`` is printable ASCII with well-formed escapes; escape what is not allowed."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        o = ord(c)
        if o < 0x21 or o > 0x7E:
            raise InvalidProxyPath(
                f"the {what} holds a control, space or non-ASCII character (percent-encode it)"
            )
        if c == "\\":
            raise InvalidProxyPath(f"the {what} holds a backslash")
        if c == "%":
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise InvalidProxyPath(f"the {what} holds a '%' that is not a percent-encoded byte")
            out.append(raw[i : i + 3].upper())
            i += 3
            continue
        out.append(c if c in allowed else f"%{o:02X}")
        i += 1
    return "".join(out)


def _decoded_views(encoded: str) -> list[str]:
    """``encoded`` and every distinct result of decoding it again, as the upstream might."""
    views = [encoded]
    current = encoded
    for _ in range(_MAX_DECODE_ROUNDS):
        raw = unquote_to_bytes(current)
        if b"\xc0" in raw or b"\xc1" in raw:
            raise InvalidProxyPath("the path holds an overlong UTF-8 sequence")
        decoded = raw.decode("utf-8", errors="replace")
        if decoded == current:
            return views
        views.append(decoded)
        current = decoded
    raise InvalidProxyPath("the path is percent-encoded too many times")


def _bad_char(view: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\\\u2028\u2029\ufeff" for c in view)


def _dot_segment(segment: str) -> bool:
    core = segment.split(";", 1)[0].strip()
    return bool(core) and core.strip(".") == ""


def _check_view(view: str) -> None:
    for form in {view, unicodedata.normalize("NFKC", view)}:
        if _bad_char(form):
            raise InvalidProxyPath("the path holds a control character or a backslash")
        if form.startswith("/") or "//" in form:
            raise InvalidProxyPath("the path may not start with '/' or hold empty segments")
        segments = form.split("/")
        if any(_dot_segment(s) for s in segments):
            raise InvalidProxyPath("the path may not hold '.' or '..' segments")
        first = segments[0]
        if "@" in first:
            raise InvalidProxyPath("the path's first segment may not hold '@'")
        m = _SCHEME_PREFIX.match(first)
        if m is not None and m.group(1).lower() in _SCHEMES:
            raise InvalidProxyPath("the path may not be an absolute URL")


def normalise_path(raw: str) -> str:
    """The caller's path below the base URL (percent-encoded, no leading ``/``), made safe.

    ``raw`` is the request target's path after ``/v1/proxy/{grant_id}/``, as sent
    (bytes decoded as latin-1). Returns it with characters outside ``pchar``
    escaped; raises ``InvalidProxyPath`` for anything that could leave the base path.
    """
    if len(raw) > MAX_PATH_LENGTH:
        raise InvalidProxyPath(f"the path is longer than {MAX_PATH_LENGTH} characters")
    encoded = _encode(raw, _PATH_CHARS, "path")
    for view in _decoded_views(encoded):
        _check_view(view)
    return encoded


def normalise_query(raw: str) -> str:
    """The caller's query string as sent (without ``?``), checked and escaped where needed."""
    if len(raw) > MAX_QUERY_LENGTH:
        raise InvalidProxyPath(f"the query string is longer than {MAX_QUERY_LENGTH} characters")
    return _encode(raw, _QUERY_CHARS, "query string")


def with_query_param(query: str, name: str, value: str) -> str:
    """``query`` without any ``name`` parameter of the caller's, then ``name=value`` appended."""
    kept = [
        pair for pair in query.split("&") if pair and unquote_plus(pair.split("=", 1)[0]) != name
    ]
    kept.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return "&".join(kept)


def join_url(base_url: str, path: str, query: str) -> str:
    """The upstream URL: ``base_url``'s origin and path, ``/``, ``path`` and the queries joined.

    ``path`` must come from ``normalise_path`` and ``query`` from ``normalise_query``.
    A fragment of the base URL is dropped; its own query parameters come first.
    """
    parts = urlsplit(base_url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or any(ord(c) < 0x21 or ord(c) > 0x7E for c in base_url)
    ):
        raise ValueError("the API base URL must be an absolute http(s) URL without credentials")
    url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/{path}"
    q = "&".join(x for x in (parts.query, query) if x)
    return f"{url}?{q}" if q else url
