"""Fetching small JSON documents (metadata, registrations) through the network guard.

Every URL is checked by ``netguard.check_url`` before the request, and the session's
``GuardedResolver`` checks the addresses a host name resolves to. Redirects are never
followed (a metadata URL that redirects is not the document it names). Bodies are read
whole, up to a size cap: a document cut short is an error, never a parse of half a body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from grantkeeper.errors import UnsafeUrl
from grantkeeper.netguard import check_url
from grantkeeper.oauth.body import BodyTooLarge, read_body

__all__ = ["MAX_DOCUMENT_BYTES", "FetchError", "Fetched", "fetch"]

#: metadata documents and registration responses are small; anything bigger is refused
MAX_DOCUMENT_BYTES: Final = 256 * 1024


class FetchError(Exception):
    """The document could not be fetched or is not a JSON object; ``str()`` names the URL."""


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    #: the JSON object of the body (``None`` when the body is empty or not JSON)
    body: dict[str, Any] | None


async def _read_whole(resp: aiohttp.ClientResponse, max_bytes: int, url: str) -> bytes:
    try:
        return await read_body(resp, max_bytes)
    except BodyTooLarge:
        raise FetchError(f"{url}: the response is larger than {max_bytes} bytes") from None


async def fetch(
    http: aiohttp.ClientSession,
    url: str,
    *,
    allow_private: bool,
    timeout: float,
    what: str,
    method: str = "GET",
    json_body: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    read_body: bool = True,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> Fetched:
    """One request; any status comes back (the caller decides), transport failures raise."""
    try:
        check_url(url, allow_private=allow_private, what=what)
    except UnsafeUrl as exc:
        raise FetchError(f"{url}: {exc.detail}") from None
    send_headers = {"Accept": "application/json", **(headers or {})}
    data: bytes | None = None
    if json_body is not None:
        data = orjson.dumps(dict(json_body))
        send_headers["Content-Type"] = "application/json"
    try:
        async with http.request(
            method,
            url,
            data=data,
            headers=send_headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            raw = await _read_whole(resp, max_bytes, url) if read_body else b""
            status, resp_headers = resp.status, resp.headers
    except TimeoutError:
        raise FetchError(f"{url}: no answer within {timeout:g} seconds") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise FetchError(f"{url}: could not be reached ({type(exc).__name__})") from None
    body: dict[str, Any] | None = None
    if raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
    return Fetched(url=url, status=status, headers=resp_headers, body=body)
