"""Pure-ASGI middleware: body limits and media types, security headers, access log.

Pure ASGI (not BaseHTTPMiddleware) so the hot path pays a function call, not a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grantkeeper.api.errors import (
    domain_error_response,
    store_error_response,
    unexpected_error_response,
)
from grantkeeper.errors import GrantkeeperError
from grantkeeper.store.unavailable import UNAVAILABLE
from grantkeeper.tracing import log_extra

__all__ = ["AccessLog", "BodyGuard", "TokenFastPath", "flush_access_log"]

access_log = logging.getLogger("grantkeeper.access")

_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}


def _problem(status: int, code: str, title: str, detail: str) -> tuple[dict[str, Any], bytes]:
    body = orjson.dumps(
        {
            "type": f"https://grantkeeper.dev/problems/{code.replace('_', '-')}",
            "title": title,
            "status": status,
            "detail": detail,
            "code": code,
        }
    )
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ],
    }
    return start, body


async def _send_problem(send: Send, status: int, code: str, title: str, detail: str) -> None:
    start, body = _problem(status, code, title, detail)
    await send(start)
    await send({"type": "http.response.body", "body": body})


def _refused(headers: dict[bytes, bytes], limit: int) -> tuple[int, str, str, str] | None:
    """What ``BodyGuard`` answers from the headers alone (status, code, title, detail), or None."""
    cl = headers.get(b"content-length")
    te = headers.get(b"transfer-encoding")
    if cl is not None and te is not None:
        return 400, "bad_request", "Bad request", "both Content-Length and Transfer-Encoding"
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            return 400, "bad_request", "Bad request", "invalid Content-Length"
        if n > limit:
            return 413, "payload_too_large", "Request body too large", f"the limit is {limit} bytes"
    ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    has_body = te is not None or (cl is not None and cl != b"0")
    if has_body and not (ctype == b"application/json" or ctype.endswith(b"+json")):
        return 415, "unsupported_media_type", "Unsupported media type", "send application/json"
    return None


#: the body was over the limit (chunked: only known while reading)
_TOO_LARGE = object()


async def _read_body(receive: Receive, limit: int) -> bytes | object | None:
    """The whole body (small: at most ``limit``), ``_TOO_LARGE``, or None if the client went away.

    Read here rather than raising from inside the app's receive: FastAPI turns any
    exception raised while it reads the body into a 400, so a chunked body over the
    limit would never become a 413.
    """
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        return _TOO_LARGE
    if not message.get("more_body", False):
        return body  # the usual case: one message
    chunks = [body]
    received = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            return _TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> tuple[int, str, str, str]:
    return 413, "payload_too_large", "Request body too large", f"the limit is {limit} bytes"


class BodyGuard:
    """For ``/v1`` JSON endpoints: 413 over the limit (chunked too), 415 for non-JSON bodies,
    400 for both Content-Length and Transfer-Encoding. The proxy streams its own bodies."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith("/v1/") or path.startswith("/v1/proxy/"):
            await self.app(scope, receive, send)
            return
        refused = _refused(dict(scope["headers"]), self.max_body)
        if refused is not None:
            await _send_problem(send, *refused)
            return
        body = await _read_body(receive, self.max_body)
        if body is None:
            return  # the client went away
        if body is _TOO_LARGE:
            await _send_problem(send, *_too_large(self.max_body))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _AccessBatch:
    """Access-log entries of one event-loop turn, written together right after it.

    Per request the hot path only appends a tuple; building the log records, formatting
    them (with the configured formatter: the lines are the same as before) and writing
    them (one ``write`` per handler per batch, not one per line) happen in a callback
    scheduled on the loop, outside any request.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str, int, float, dict[str, Any] | None]] = []
        self.scheduled = False

    def add(
        self,
        at: float,
        method: str,
        path: str,
        status: int,
        ms: float,
        extra: dict[str, Any] | None,
    ) -> None:
        self.entries.append((at, method, path, status, ms, extra))
        if not self.scheduled:
            self.scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (cannot happen inside ASGI): write now
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        entries, self.entries = self.entries, []
        if not entries or access_log.disabled:
            return
        records = []
        for at, method, path, status, ms, extra in entries:
            rec = access_log.makeRecord(
                access_log.name, logging.INFO, __file__, 0, _ACCESS_FMT,
                (method, path, status, ms), None, extra=extra,
            )  # fmt: skip
            rec.created = at
            rec.msecs = int((at - int(at)) * 1000) + 0.0
            if access_log.filter(rec):
                records.append(rec)
        _emit_batch(records)


_ACCESS_FMT = "%s %s %d %.1fms"


def _emit_batch(records: list[logging.LogRecord]) -> None:
    """``Logger.handle`` for many records: the same handlers, levels and filters, but a
    plain stream handler gets all its lines in one write."""
    logger: logging.Logger | None = access_log
    found = False
    while logger is not None:
        for h in logger.handlers:
            found = True
            mine = [r for r in records if r.levelno >= h.level]
            if not mine:
                continue
            if type(h) is logging.StreamHandler:
                lines = [h.format(r) + h.terminator for r in mine if h.filter(r)]
                if lines:
                    with h.lock if h.lock is not None else contextlib.nullcontext():
                        try:
                            h.stream.write("".join(lines))
                            h.flush()
                        except Exception:  # noqa: BLE001 - as Handler.handleError would
                            h.handleError(mine[0])
            else:
                for r in mine:
                    h.handle(r)
        logger = logger.parent if logger.propagate else None
    if not found and logging.lastResort is not None:
        for r in records:
            if r.levelno >= logging.lastResort.level:
                logging.lastResort.handle(r)


_batch = _AccessBatch()


def flush_access_log() -> None:
    """Write what is pending now (at shutdown)."""
    _batch.flush()


class AccessLog:
    """One line per request: method, path (never the query string: it may carry a key), status,
    time; written in batches (``_AccessBatch``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope["path"]
            if path.startswith("/connect/"):
                path = "/connect/…"  # the connect URL is a capability
            _batch.add(
                time.time(),
                scope["method"],
                path[:200],
                status,
                (time.perf_counter() - t0) * 1000,
                log_extra(),
            )


#: what the token read's fast path calls with the request and its whole body
Answer = Callable[[Scope, bytes], Awaitable[Response]]


class TokenFastPath:
    """Outermost layer: ``POST /v1/grants/{id}/token`` goes straight to its raw endpoint.

    The token read is on the hot path of every API call an app makes; the framework's
    routing, its exception layers and the other middleware cost more than the read
    itself. This keeps exactly what shapes its answers (the access log, the body guard's
    checks, the app's error mapping), fused into one coroutine (no wrapped ``send`` or
    ``receive``, no layer per concern), so every answer (status, headers, problem+json
    body) is the same as through the full stack (tested side by side). Anything else,
    including ids that are not 36 characters, takes the full stack.
    """

    _PREFIX = "/v1/grants/"
    _SUFFIX = "/token"
    _LEN = len(_PREFIX) + 36 + len(_SUFFIX)

    def __init__(self, app: ASGIApp, answer: Answer, max_body: int) -> None:
        self.app = app
        self.answer = answer
        self.max_body = max_body

    def matches(self, scope: Scope) -> bool:
        """Whether this is the token read (then ``scope`` gets its path parameter)."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if (
                len(path) == self._LEN
                and path.startswith(self._PREFIX)
                and path.endswith(self._SUFFIX)
            ):
                scope["path_params"] = {"grant_id": path[len(self._PREFIX) : -len(self._SUFFIX)]}
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.matches(scope):
            await self.fast(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def fast(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The token read: access log, body guard, endpoint and error mapping in one."""
        if not access_log.isEnabledFor(logging.INFO):
            await self._respond(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0
        try:
            status = await self._respond(scope, receive, send)
        finally:
            _batch.add(
                time.time(),
                "POST",
                scope["path"][:200],
                status,
                (time.perf_counter() - t0) * 1000,
                log_extra(),
            )

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer; the status sent (0: none, the client went away)."""
        refused = _refused(dict(scope["headers"]), self.max_body)
        if refused is not None:
            await _send_problem(send, *refused)
            return refused[0]
        body = await _read_body(receive, self.max_body)
        if body is None:
            return 0
        if body is _TOO_LARGE:
            await _send_problem(send, *_too_large(self.max_body))
            return 413
        assert isinstance(body, bytes)
        try:
            response = await self.answer(scope, body)
        except ClientDisconnect:
            return 0
        except GrantkeeperError as exc:
            response = domain_error_response(exc)
        except UNAVAILABLE as exc:
            response = store_error_response(exc)
        except Exception as exc:  # noqa: BLE001 - answered as any unexpected error is
            response = unexpected_error_response(exc)
        await response(scope, receive, send)
        return response.status_code
