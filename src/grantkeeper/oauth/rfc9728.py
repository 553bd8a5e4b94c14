"""OAuth 2.0 Protected Resource Metadata (RFC 9728), I/O-free.

- ``well_known_url``: section 3.1: the well-known path is inserted between the host and
  the resource's path (a lone terminating ``/`` after the host is dropped first).
- ``parse_challenges`` / ``bearer_challenge``: the ``WWW-Authenticate`` header (RFC 9110
  11.6.1) of a 401, whose ``resource_metadata`` parameter names the document (section 5.1).
- ``parse_metadata``: section 3.3: the document's ``resource`` must be identical to the
  resource the client used (the URL it requested, or the one the well-known URL was
  formed from); otherwise the document is refused, whoever served it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "WELL_KNOWN",
    "InvalidResourceMetadata",
    "ProtectedResourceMetadata",
    "bearer_challenge",
    "parse_challenges",
    "parse_metadata",
    "well_known_url",
]

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class InvalidResourceMetadata(ValueError):
    """The protected resource metadata fails a check of RFC 9728."""


def well_known_url(resource: str) -> str:
    """The protected resource metadata URL of ``resource`` (RFC 9728 section 3.1)."""
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, parts.query, ""))


def _skip(value: str, i: int, chars: str = " \t") -> int:
    while i < len(value) and value[i] in chars:
        i += 1
    return i


def _quoted(value: str, i: int) -> tuple[str, int]:
    """The quoted-string starting at ``value[i] == '"'``; returns (text, index after)."""
    out: list[str] = []
    i += 1
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted string")


def parse_challenges(header_values: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """Challenges of ``WWW-Authenticate`` header values: ``[(scheme, {param: value})]``.

    Scheme and parameter names are lower-cased; a repeated parameter keeps its first
    value; a malformed header yields the challenges parsed before the defect.
    """
    out: list[tuple[str, dict[str, str]]] = []
    for value in header_values:
        current: dict[str, str] | None = None
        i = 0
        try:
            while True:
                i = _skip(value, i, " \t,")
                m = _TOKEN.match(value, i)
                if m is None:
                    break
                name = m.group().lower()
                j = _skip(value, m.end())
                if j < len(value) and value[j] == "=" and current is not None:
                    j = _skip(value, j + 1)
                    if j < len(value) and value[j] == '"':
                        text, i = _quoted(value, j)
                    else:
                        t = _TOKEN.match(value, j)
                        if t is None:
                            break
                        text, i = t.group(), t.end()
                    current.setdefault(name, text)
                elif j < len(value) and value[j] == "=":
                    break  # a parameter before any scheme: malformed
                else:
                    current = {}
                    out.append((name, current))
                    i = j
        except ValueError:
            pass
    return out


def bearer_challenge(header_values: Iterable[str]) -> dict[str, str] | None:
    """The parameters of the first ``Bearer`` challenge, or None."""
    for scheme, params in parse_challenges(header_values):
        if scheme == "bearer":
            return params
    return None


@dataclass(frozen=True, slots=True)
class ProtectedResourceMetadata:
    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    bearer_methods_supported: tuple[str, ...]


def _strings(doc: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = doc.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidResourceMetadata(f"{name} must be an array of strings")
    return tuple(value)


def parse_metadata(doc: Mapping[str, Any], *, expected_resource: str) -> ProtectedResourceMetadata:
    """Validate a protected resource metadata document for ``expected_resource``."""
    resource = doc.get("resource")
    if not isinstance(resource, str) or not resource:
        raise InvalidResourceMetadata("the document has no resource")
    if resource != expected_resource:
        raise InvalidResourceMetadata(
            f"the document is for the resource {resource[:200]!r}, "
            f"not {expected_resource[:200]!r} (RFC 9728 section 3.3)"
        )
    servers = _strings(doc, "authorization_servers")
    if not servers:
        raise InvalidResourceMetadata("the document names no authorization_servers")
    bearer = _strings(doc, "bearer_methods_supported")
    if bearer and "header" not in bearer:
        raise InvalidResourceMetadata("the resource does not accept bearer tokens in a header")
    return ProtectedResourceMetadata(
        resource=resource,
        authorization_servers=servers,
        scopes_supported=_strings(doc, "scopes_supported"),
        bearer_methods_supported=bearer,
    )
