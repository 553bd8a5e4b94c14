"""Forwarding one proxied call: headers in and out, the request body, the upstream stream.

- Request headers: the caller's ``Authorization`` (its API key), ``Cookie``, ``Host``,
  ``X-Forwarded-*``, ``Forwarded``, hop-by-hop headers (and those named in
  ``Connection``), ``Expect`` and anything ``x-grantkeeper-*`` never reach the provider;
  the provider token is stamped as the catalog says.
- Response headers: hop-by-hop headers, ``Set-Cookie``, ``Alt-Svc`` and ``Date`` are
  dropped, and so is any header that carries the access token (a redirect that
  echoes a query-stamped token, say).
- Bodies stream both ways in bounded memory: the request body is buffered only up to
  ``REPLAY_BUFFER_BYTES`` (then the call can be replayed after a refresh); the response
  is relayed chunk by chunk with backpressure, its size capped. A response cut short
  (size cap, provider timeout) ends without its final chunk, so the caller sees a
  truncated body, never a complete-looking one.
- Redirects are never followed: a 3xx goes back to the caller as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from yarl import URL

from grantkeeper.errors import (
    BadRequest,
    ProviderUnavailable,
    RequestTooLarge,
    UpstreamTimeout,
)
from grantkeeper.kinds.base import Stamp, render_stamp
from grantkeeper.providers.catalog import StampSpec

__all__ = [
    "REPLAY_BUFFER_BYTES",
    "RequestBody",
    "UpstreamStream",
    "open_upstream",
    "read_request_body",
    "request_headers",
    "response_headers",
]

log = logging.getLogger(__name__)

#: request bodies up to this size are buffered, so the call can be replayed after a 401
REPLAY_BUFFER_BYTES: Final = 1024 * 1024
_CHUNK: Final = 64 * 1024

_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP: Final = _HOP_BY_HOP | {
    "authorization",
    "cookie",
    "cookie2",
    "host",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "via",
    "expect",
    "content-length",  # set again from what is actually sent
}
_REQUEST_DROP_PREFIXES: Final = ("x-forwarded-", "x-grantkeeper-")
_RESPONSE_DROP: Final = _HOP_BY_HOP | {"set-cookie", "set-cookie2", "alt-svc", "date"}


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def request_headers(
    incoming: Iterable[tuple[bytes, bytes]],
    stamp: StampSpec | Stamp,
    access_token: str | None = None,
) -> CIMultiDict[str]:
    """The headers sent upstream: the caller's, filtered, plus the stamped credential.

    ``stamp`` is a kind's ``Stamp`` or (for an access token) the entry's ``StampSpec``.
    """
    if isinstance(stamp, StampSpec):
        stamp = render_stamp(stamp, "oauth2", {"access_token": access_token or ""})
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in incoming]
    named = _connection_tokens(v for k, v in pairs if k == "connection")
    stamped = {n.lower() for n in stamp.headers}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        if (
            name in _REQUEST_DROP
            or name in named
            or name.startswith(_REQUEST_DROP_PREFIXES)
            or name in stamped
        ):
            continue
        out.add(name, value)
    if "accept-encoding" not in out:
        # bodies are relayed as they come: ask for nothing the caller cannot decode
        out["accept-encoding"] = "identity"
    for name, value in stamp.headers.items():
        out[name] = value
    return out


def response_headers(
    raw: Iterable[tuple[bytes, bytes]], access_token: str | Iterable[str]
) -> list[tuple[bytes, bytes]]:
    """The provider's response headers for the caller: end-to-end ones only, no cookies,
    and nothing that reveals the access token (or any stamped secret)."""
    pairs = [(k.lower(), v) for k, v in raw]
    named = _connection_tokens(v.decode("latin-1") for k, v in pairs if k == b"connection")
    values = [access_token] if isinstance(access_token, str) else list(access_token)
    secrets = {
        form for v in values if len(v) >= 4 for form in (v.encode(), quote(v, safe="").encode())
    }
    out: list[tuple[bytes, bytes]] = []
    for name, value in pairs:
        text = name.decode("latin-1")
        if text in _RESPONSE_DROP or text in named:
            continue
        if any(s and s in value for s in secrets):
            log.warning("proxy: dropped a response header %r that carried the access token", text)
            continue
        out.append((name, value))
    return out


@dataclass
class RequestBody:
    """The caller's request body: whole (replayable) or as a one-shot stream."""

    #: the whole body when it was small enough to buffer (``b""`` for none)
    data: bytes | None
    stream: AsyncIterator[bytes] | None
    #: the declared length of a streamed body (forwarded as Content-Length)
    length: int | None
    #: set once the caller's body has been read to its end (or there was none)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: the stream ran past the size limit
    too_large: bool = False

    @property
    def replayable(self) -> bool:
        return self.data is not None


async def read_request_body(
    request: Request, *, max_bytes: int, buffer_bytes: int = REPLAY_BUFFER_BYTES
) -> RequestBody:
    """Buffer a small body; hand a large one over as a stream capped at ``max_bytes``."""
    headers = request.headers
    te = headers.getlist("transfer-encoding")
    cls = headers.getlist("content-length")
    if te and cls:
        raise BadRequest("a request may not carry both Content-Length and Transfer-Encoding")
    length: int | None = None
    if cls:
        if len(set(cls)) != 1 or not cls[0].strip().isdigit():
            raise BadRequest("the request has an invalid Content-Length")
        length = int(cls[0])
        if length > max_bytes:
            raise RequestTooLarge(f"the limit is {max_bytes} bytes")
    if not te and not length:
        body = RequestBody(data=b"", stream=None, length=None)
        body.done.set()
        return body
    chunks = request.stream().__aiter__()
    buf = bytearray()
    if length is None or length <= buffer_bytes:
        while len(buf) <= buffer_bytes:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                if len(buf) > max_bytes:
                    raise RequestTooLarge(f"the limit is {max_bytes} bytes") from None
                body = RequestBody(data=bytes(buf), stream=None, length=None)
                body.done.set()
                return body
            buf += chunk
            if len(buf) > max_bytes:
                raise RequestTooLarge(f"the limit is {max_bytes} bytes")
    body = RequestBody(data=None, stream=None, length=length)
    body.stream = _stream(body, bytes(buf), chunks, max_bytes)
    return body


async def _stream(
    body: RequestBody, prefix: bytes, chunks: AsyncIterator[bytes], max_bytes: int
) -> AsyncIterator[bytes]:
    sent = len(prefix)
    if prefix:
        yield prefix
    try:
        async for chunk in chunks:
            sent += len(chunk)
            if sent > max_bytes:
                body.too_large = True
                raise RequestTooLarge(f"the limit is {max_bytes} bytes")
            if chunk:
                yield chunk
    finally:
        body.done.set()


async def open_upstream(
    http: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    body: RequestBody,
    *,
    timeout: float,
) -> aiohttp.ClientResponse:
    """Send the call and wait for the response headers (at most ``timeout`` seconds)."""
    data: bytes | AsyncIterator[bytes] | None
    if body.data is not None:
        data = body.data or None
    else:
        data = body.stream
        if body.length is not None:
            headers["Content-Length"] = str(body.length)
    try:
        async with asyncio.timeout(timeout):
            return await http.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                skip_auto_headers=("Content-Type",),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            )
    except TimeoutError:
        if body.too_large:
            raise RequestTooLarge("the request body is too large") from None
        raise UpstreamTimeout(
            f"the provider's API did not answer within {timeout:g} seconds"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        if body.too_large:
            raise RequestTooLarge("the request body is too large") from None
        log.info("proxy: upstream request failed (%s)", type(exc).__name__)
        raise ProviderUnavailable("the provider's API could not be reached") from None


class UpstreamStream(StreamingResponse):
    """Relays an upstream response: status, filtered headers, then the body chunk by chunk."""

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        raw_headers: list[tuple[bytes, bytes]],
        *,
        max_bytes: int,
        has_body: bool,
        request_done: asyncio.Event,
    ) -> None:
        # StreamingResponse.__init__ is skipped: the body comes from ``upstream``
        self.status_code = upstream.status
        self.background = None
        self.raw_headers = raw_headers
        self._upstream = upstream
        self._max_bytes = max_bytes
        self._has_body = has_body
        self._request_done = request_done

    async def stream_response(self, send: Send) -> None:
        upstream = self._upstream
        complete = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if self._has_body:
                sent = 0
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    sent += len(chunk)
                    if sent > self._max_bytes:
                        log.warning("proxy: response cut off at the %d byte limit", self._max_bytes)
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            complete = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("proxy: the provider's response broke off (%s)", type(exc).__name__)
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, and stop early if the caller goes away.

        The caller's disconnect is watched only once its request body has been read
        (before that, the body stream is the one reading ``receive``).
        """
        streaming = asyncio.ensure_future(self.stream_response(send))
        watching = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watching, streaming):
                if not task.done():
                    task.cancel()
            for task in (watching, streaming):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        failure = None if streaming.cancelled() else streaming.exception()
        if failure is not None:
            raise failure

    async def _watch_disconnect(self, receive: Receive) -> None:
        await self._request_done.wait()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
