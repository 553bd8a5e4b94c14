"""A lean HTTP/1.1 client for the calls to a provider's token endpoint.

Why not aiohttp here: a refresh is one small form POST and one small JSON answer, and
aiohttp's request machinery (``ClientSession._request``: URL and header objects, form
encoding, tracing hooks, response objects) cost ~500 us of CPU per call, more than the
rest of a proactive refresh together. This client does the same call in a fraction of
that: an ``asyncio.Protocol`` per connection, ``httptools`` (llhttp) for parsing,
keep-alive connections pooled per (scheme, host, port).

What it keeps from the aiohttp session it replaces for these calls (``runtime``):

* the network guard: host names resolve through ``netguard.GuardedResolver`` (non-public
  addresses dropped unless private networks are allowed), IP literals are checked the
  way ``netguard.GuardedConnector`` checks them; DNS answers are cached for 60 s;
* TLS: ``ssl.create_default_context()`` (system trust store, hostname verification),
  ALPN ``http/1.1``, as aiohttp's default verified context; never unverified;
* no proxies from the environment, no cookies, no redirects followed;
* at most 64 connections per host; an idle connection is kept 15 s at most (less when
  the server's ``Keep-Alive: timeout`` says so);
* the answer is read whole, up to a size cap, before the caller sees it;
* ``timeout`` bounds connecting (including waiting for a free connection) and every
  silence while the answer arrives; an answer that keeps arriving is read until
  ``answer_deadline`` after its headers.

Never retried: once any byte of a request was written, a failure is the caller's
(a refresh token may have been spent: the outcome is unknown). The only thing done
again is picking a connection, when a pooled one turns out closed *before* anything was
written to it.

Errors (``str()`` never holds a secret; nothing here logs)::

    Http1Error
    + ConnectFailed       nothing was sent (resolution, the guard, connect, TLS)
    + ConnectionClosed    the connection ended before the answer was whole
    + MalformedResponse   the answer is not HTTP/1.1 we can read
    TimeoutError          no connection, or silence, within ``timeout`` (before the headers)
    IncompleteAnswer      status and headers arrived, the body did not arrive whole
                          (``cause``: TimeoutError, ConnectionClosed, MalformedResponse,
                          or ``oauth.body.BodyTooLarge``)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import quote, urlsplit

import httptools
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy

from grantkeeper.netguard import GuardedResolver, is_public_ip
from grantkeeper.oauth.body import BodyTooLarge

__all__ = [
    "ConnectFailed",
    "ConnectionClosed",
    "Http1Client",
    "Http1Error",
    "Http1Response",
    "IncompleteAnswer",
    "MalformedResponse",
]

#: the most the status line and headers of one answer may take
MAX_HEAD_BYTES: Final = 64 * 1024
#: the longest an idle connection is kept (aiohttp's default keepalive_timeout)
KEEPALIVE_SECONDS: Final = 15.0
LIMIT_PER_HOST: Final = 64
DNS_TTL: Final = 60.0
#: characters left as they are in a request target (already percent-encoded input stays)
_SAFE_TARGET: Final = "/%:@!$&'()*+,;=-._~?"


class Http1Error(Exception):
    """A transport failure of the lean client."""


class ConnectFailed(Http1Error):
    """No connection: nothing of the request was sent."""


class ConnectionClosed(Http1Error):
    """The connection ended before the answer was whole."""


class MalformedResponse(Http1Error):
    """The answer is not HTTP/1.1 this client reads."""


class IncompleteAnswer(Exception):
    """The status line and headers arrived; the body did not arrive whole."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], cause: BaseException) -> None:
        super().__init__(f"HTTP {status} answer incomplete ({type(cause).__name__})")
        self.status = status
        self.headers = headers
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Http1Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


_ssl_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """The verified context aiohttp uses by default (system CAs, hostname check)."""
    global _ssl_context
    if _ssl_context is None:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(("http/1.1",))
        _ssl_context = ctx
    return _ssl_context


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]
    hostname: str
    port: int
    tls: bool
    #: ``METHOD`` is prepended; ends with the Host and User-Agent lines
    head: str


def _parse_target(url: str, user_agent: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConnectFailed("only http and https URLs are called")
    try:
        port = parts.port
    except ValueError:
        raise ConnectFailed("the URL's port is not valid") from None
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None:
        raise ConnectFailed("the URL names no host or carries credentials")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ConnectFailed("the URL's host name is not valid") from None
    tls = scheme == "https"
    default = 443 if tls else 80
    port = port or default
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default else f"{name}:{port}"
    target = quote(parts.path or "/", safe=_SAFE_TARGET)
    if parts.query:
        target += "?" + quote(parts.query, safe=_SAFE_TARGET)
    head = f" {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n"
    return _Target((scheme, host, port), host, port, tls, head)


class _Conn(asyncio.Protocol):
    """One connection: one exchange at a time, the answer parsed by llhttp."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        #: the connection cannot carry another exchange
        self.closed = False
        #: when an idle connection stops being reused (loop time)
        self.expires = 0.0
        self._keepalive = KEEPALIVE_SECONDS
        self._waiter: asyncio.Future[Http1Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._answer_deadline = 0.0
        self._max_body = 0
        self._reset()

    def _reset(self) -> None:
        self._waiter = None
        self._last = 0.0
        self._body_deadline = 0.0
        self._head_bytes = 0
        self._informational = False
        self._headers_done = False
        self._complete = False
        self._status = 0
        self._raw_headers: list[tuple[str, str]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._eof_body = False
        self._keep = False
        self._error: BaseException | None = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._complete:
            # bytes nobody asked for: this connection's framing can no longer be trusted
            self.drop()
            return
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if not self._complete:
                self._fail(self._error or MalformedResponse("the answer is not valid HTTP/1.1"))
                return
            self.closed = True  # bytes after a whole answer: deliver it, never reuse
        if self._error is not None:
            self._fail(self._error)
        elif self._complete:
            self._finish()
        elif not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(MalformedResponse("the answer's headers are too large"))

    def eof_received(self) -> bool | None:
        self._ended()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        self.transport = None

    def _ended(self) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and self._eof_body and self._error is None:
            # an answer without Content-Length or chunked framing ends with the connection
            self._complete = True
            self._finish()
        else:
            self._fail(ConnectionClosed("the connection closed before the answer was whole"))

    # ---------------------------------------------------------------- httptools callbacks
    # (they never raise: an error is noted and acted on once feed_data returns)

    def on_message_begin(self) -> None:
        if self._complete:
            self.closed = True  # a second answer to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._headers_done:  # trailers of a chunked body are ignored
            self._raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # an interim answer (103 Early Hints, an unasked-for 100): the real one follows
            self._informational = True
            self._raw_headers = []
            return
        self._status = status
        self._headers_done = True
        # asked here: once the message is complete llhttp has reset what it answers from
        self._keep = self._parser.should_keep_alive()
        headers = CIMultiDictProxy(CIMultiDict(self._raw_headers))
        self._headers = headers
        self._body_deadline = self._loop.time() + self._answer_deadline
        length = headers.get("Content-Length")
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            return
        if length is not None:
            length = length.strip()
            if length.isdigit() and int(length) > self._max_body:
                self._error = BodyTooLarge(
                    f"the provider announced {int(length)} bytes (cap {self._max_body})"
                )
        elif status not in (204, 304):
            self._eof_body = True

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._size += len(body)
        if self._size > self._max_body:
            if self._error is None:
                self._error = BodyTooLarge(f"the provider's answer exceeds {self._max_body} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif self._headers_done:
            self._complete = True

    # ---------------------------------------------------------------- one exchange

    async def exchange(
        self, request: bytes, timeout: float, answer_deadline: float, max_body: int
    ) -> Http1Response:
        transport = self.transport
        assert transport is not None
        loop = self._loop
        waiter: asyncio.Future[Http1Response] = loop.create_future()
        self._waiter = waiter
        self._timeout = timeout
        self._answer_deadline = answer_deadline
        self._max_body = max_body
        self._last = now = loop.time()
        self._timer = loop.call_at(now + timeout, self._on_timer)
        transport.write(request)
        try:
            return await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._reset()

    def _on_timer(self) -> None:
        """One timer for the silence timeout and the body's deadline: it re-arms itself
        for what is left instead of being re-armed on every piece of data."""
        self._timer = None
        now = self._loop.time()
        limit = self._last + self._timeout
        if self._headers_done:
            limit = min(limit, self._body_deadline)
        if now >= limit:
            self._fail(TimeoutError())
        else:
            self._timer = self._loop.call_at(limit, self._on_timer)

    def _finish(self) -> None:
        waiter, headers = self._waiter, self._headers
        assert waiter is not None and headers is not None
        body = b"".join(self._body)
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            try:
                body = _decode(body, encoding, self._max_body)
            except (BodyTooLarge, MalformedResponse) as exc:
                self._fail(exc)
                return
        keep = self._keep and not self._eof_body and not self.closed
        if keep:
            self._keepalive = _keepalive_seconds(headers.get("Keep-Alive"))
            keep = self._keepalive > 0
        if not keep:
            self.drop()
        if not waiter.done():
            waiter.set_result(Http1Response(self._status, headers, body))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self.drop()
        if waiter is None or waiter.done():
            return
        if self._headers_done and self._headers is not None:
            waiter.set_exception(IncompleteAnswer(self._status, self._headers, exc))
        else:
            waiter.set_exception(exc)

    def drop(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def usable(self, now: float) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing() and now < self.expires

    def park(self, now: float) -> None:
        self.expires = now + self._keepalive


def _keepalive_seconds(header: str | None) -> float:
    """How long to keep an idle connection: ours, or less when the server closes earlier
    (a request written as the server closes the connection is a failed refresh)."""
    if header:
        for part in header.split(","):
            name, _, value = part.partition("=")
            if name.strip().lower() == "timeout" and value.strip().isdigit():
                return min(KEEPALIVE_SECONDS, float(value.strip()) - 1.0)
    return KEEPALIVE_SECONDS


def _decode(body: bytes, encoding: str, cap: int) -> bytes:
    """A compressed answer (we ask for identity; some servers compress anyway)."""
    if encoding in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        d = zlib.decompressobj()
    else:
        raise MalformedResponse("the answer uses an unsupported content encoding")
    try:
        out = d.decompress(body, cap + 1)
    except zlib.error:
        raise MalformedResponse("the answer's compressed body is broken") from None
    if len(out) > cap or d.unconsumed_tail:
        raise BodyTooLarge(f"the provider's answer exceeds {cap} bytes")
    return out


class _Pool:
    """Connections to one (scheme, host, port): idle ones LIFO, at most ``limit`` in all."""

    __slots__ = ("conns", "connecting", "idle", "waiters")

    def __init__(self) -> None:
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self, now: float) -> _Conn | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            self.discard(conn)
        return None

    def discard(self, conn: _Conn) -> None:
        conn.drop()
        if conn in self.conns:
            self.conns.remove(conn)
            self.wake()

    def wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def sweep(self, now: float) -> None:
        stale = [c for c in self.idle if not c.usable(now)]
        if stale:
            self.idle = [c for c in self.idle if c not in stale]
            for conn in stale:
                self.discard(conn)


class Http1Client:
    """Keep-alive HTTP/1.1 requests whose answers are read whole (see the module doc)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        user_agent: str = "grantkeeper",
        limit_per_host: int = LIMIT_PER_HOST,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._user_agent = user_agent
        self._limit = limit_per_host
        self._ssl = ssl_context
        self._resolver = resolver or GuardedResolver(allow_private)
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[ResolveResult]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        timeout: float,
        answer_deadline: float,
        max_body: int,
    ) -> Http1Response:
        """One request, its answer read whole. Never retried once written (module doc).

        ``headers`` must not name Host, User-Agent, Content-Length or Transfer-Encoding
        (this client writes them); answers to HEAD are not supported.
        """
        if self._closed:
            raise ConnectFailed("the HTTP client is closed")
        target = self._targets.get(url)
        if target is None:
            target = _parse_target(url, self._user_agent)
            if len(self._targets) < 1024:
                self._targets[url] = target
        lines = []
        for k, v in headers.items():
            if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
                raise ValueError("a header name or value holds a line break")
            lines.append(f"{k}: {v}\r\n")
        request = (
            f"{method}{target.head}{''.join(lines)}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        pool = self._pools.get(target.key)
        if pool is None:
            pool = self._pools[target.key] = _Pool()
        loop = asyncio.get_running_loop()
        # a pooled connection found closed here has had nothing written to it: taking
        # another is the one thing ever done again
        conn = pool.take(loop.time())
        if conn is None:
            async with asyncio.timeout(timeout):
                conn = await self._acquire(pool, target, loop)
        try:
            response = await conn.exchange(request, timeout, answer_deadline, max_body)
        except BaseException:
            # written, outcome unknown (a failure, a cancelled caller): never reused or retried
            pool.discard(conn)
            raise
        if conn.closed or self._closed:
            pool.discard(conn)
        else:
            now = loop.time()
            conn.park(now)
            pool.idle.append(conn)
            pool.wake()
            if self._sweeper is None:
                self._sweeper = loop.call_at(now + KEEPALIVE_SECONDS + 1.0, self._sweep)
        return response

    async def _acquire(
        self, pool: _Pool, target: _Target, loop: asyncio.AbstractEventLoop
    ) -> _Conn:
        while True:
            conn = pool.take(loop.time())
            if conn is not None:
                return conn
            if len(pool.conns) + pool.connecting < self._limit:
                pool.connecting += 1
                try:
                    conn = await self._connect(target, loop)
                except BaseException:
                    pool.wake()
                    raise
                finally:
                    pool.connecting -= 1
                pool.conns.add(conn)
                return conn
            fut: asyncio.Future[None] = loop.create_future()
            pool.waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    pool.wake()  # our turn came as we were cancelled: pass it on
                raise

    async def _connect(self, target: _Target, loop: asyncio.AbstractEventLoop) -> _Conn:
        addresses = await self._addresses(target.hostname, target.port, loop)
        ctx = (self._ssl or default_ssl_context()) if target.tls else None
        last: BaseException | None = None
        for addr in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop),
                    addr["host"],
                    addr["port"],
                    family=addr["family"],
                    proto=addr["proto"],
                    flags=addr["flags"],
                    ssl=ctx,
                    server_hostname=target.hostname.rstrip(".") if ctx is not None else None,
                )
                return conn
            except OSError as exc:  # ssl.SSLError (a failed verification) is an OSError
                last = exc
        name = type(last).__name__ if last is not None else "no address"
        raise ConnectFailed(f"could not connect ({name})") from None

    async def _addresses(
        self, host: str, port: int, loop: asyncio.AbstractEventLoop
    ) -> list[ResolveResult]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            # the resolver never sees an IP literal: checked as GuardedConnector does
            if not self._allow_private and not is_public_ip(ip):
                raise ConnectFailed(f"{host} is not a public address")
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [
                ResolveResult(hostname=host, host=host, port=port, family=family, proto=0, flags=0)
            ]
        now = loop.time()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            results = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except OSError as exc:
            raise ConnectFailed(f"could not resolve the host ({type(exc).__name__})") from None
        if len(self._dns) >= 256:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_TTL, results)
        return results

    def _sweep(self) -> None:
        """Close idle connections past their keep-alive (one timer for the whole client)."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pool in self._pools.values():
            pool.sweep(now)
        if any(p.idle for p in self._pools.values()):
            self._sweeper = loop.call_at(now + KEEPALIVE_SECONDS, self._sweep)

    def idle_connections(self) -> int:
        """Connections kept open for the next request."""
        return sum(len(p.idle) for p in self._pools.values())

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            for conn in list(pool.conns):
                conn.drop()
            pool.conns.clear()
            pool.idle.clear()
            for fut in pool.waiters:
                if not fut.done():
                    fut.set_exception(ConnectFailed("the HTTP client is closed"))
            pool.waiters.clear()
        await self._resolver.close()
