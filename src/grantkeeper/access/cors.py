"""CORS for the end-user surface: ``POST /oauth/token`` and ``/v1/me/*``.

The rule (CONTRACT "Token exchange and end-user access"): an origin gets
``Access-Control-Allow-Origin`` (its own value, never ``*``) only when a subject issuer
of the environment lists it in ``allowed_origins``; never credentials mode (no
cookies are used: the bearer travels in ``Authorization`` or the form); ``Vary: Origin``
on every answer. A preflight cannot name its environment (it carries no token), so it
is answered for an origin any environment allows; the real request is then answered
with the subject's own environment's list, which the handler hands over in
``scope["gk.cors_origins"]`` once the subject is known. Before that (a malformed or
untrusted token) the union over all environments decides, so the app can read the error.
Everything else in the API is not for browsers and gets no CORS headers at all.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grantkeeper.runtime import Runtime
from grantkeeper.store import access as store
from grantkeeper.store.db import reading

__all__ = ["SCOPE_KEY", "EndUserCors", "is_end_user_path"]

SCOPE_KEY = "gk.cors_origins"
_ALLOW_METHODS = b"GET, POST, DELETE"
_ALLOW_HEADERS = b"Authorization, Content-Type"
_MAX_AGE = b"600"


def is_end_user_path(path: str) -> bool:
    return path == "/oauth/token" or path == "/v1/me" or path.startswith("/v1/me/")


async def _all_origins(scope: Scope) -> set[str]:
    rt: Runtime = scope["app"].state.runtime
    async with reading(rt.engine) as conn:
        return await store.origins(conn)


class EndUserCors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_end_user_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        origin: str | None = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        if scope["method"] == "OPTIONS" and preflight and origin is not None:
            allowed = origin in await _all_origins(scope)
            headers = [(b"vary", b"Origin"), (b"content-length", b"0")]
            if allowed:
                headers += [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", _ALLOW_METHODS),
                    (b"access-control-allow-headers", _ALLOW_HEADERS),
                    (b"access-control-max-age", _MAX_AGE),
                ]
            await send(
                {
                    "type": "http.response.start",
                    "status": 204 if allowed else 403,
                    "headers": headers,
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                vary = [v for k, v in message.get("headers", []) if k.lower() == b"vary"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"vary"]
                headers.append((b"vary", b", ".join([*vary, b"Origin"])))
                if origin is not None:
                    allowed = scope.get(SCOPE_KEY)
                    if allowed is None:
                        allowed = await _all_origins(scope)
                    if origin in allowed:
                        headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                        headers.append((b"access-control-expose-headers", b"Retry-After"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)
