"""``POST /v1/grants/{id}/token``: the hot path.

Kept lean on purpose (docs/benchmarks.md has the numbers and the profile):

* served by a raw ASGI endpoint (a Starlette ``Route`` matched before the FastAPI
  route, which stays only for the OpenAPI description): no dependency solving,
  no ``Request`` object, no pydantic; errors still go through the app's handlers;
* on PostgreSQL one round trip reads the API key and the columns of the grant that serving
  its token, or deciding to refresh it first, needs (never the refresh token itself); the
  audit row is group-committed; both on a few dedicated asyncpg connections
  (``store.hotpath``), reads grouped under load (``store.groupread``). A refresh reads the
  whole grant under its lease; on SQLite one read transaction through the engine, as before;
* the body is parsed with orjson and the answer written with orjson.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from grantkeeper import audit, ratelimit, tracing
from grantkeeper.api.deps import bearer, missing_key, parse_bearer, unauthenticated_request
from grantkeeper.apikeys import Principal, authenticate, parse_key, verify
from grantkeeper.clock import iso as _iso
from grantkeeper.credential_grants import provider_has_access_token
from grantkeeper.errors import (
    InvalidInput,
    MalformedJson,
    NoAccessToken,
    NotFound,
    Unauthenticated,
    UnsupportedMediaType,
)
from grantkeeper.grants import is_grant_id, token_aad
from grantkeeper.refresh.engine import GrantState, ensure_fresh, issued, raise_for_status
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as store
from grantkeeper.store.db import reading
from grantkeeper.store.hotpath import HotPath, TokenRow

router = APIRouter(tags=["grants"])
_PATH = "/v1/grants/{grant_id}/token"

_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "min_ttl",
            "in": "query",
            "required": False,
            "description": "Same as the body field (give it in one place only).",
            "schema": {"type": "integer", "minimum": 0, "maximum": 86400},
        },
        {
            "name": "force_refresh",
            "in": "query",
            "required": False,
            "description": "Same as the body field (give it in one place only).",
            "schema": {"type": "boolean"},
        },
    ],
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "min_ttl": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 86400,
                            "default": 300,
                        },
                        "force_refresh": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "A fresh access token",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["access_token", "token_type", "scopes", "grant_id"],
                        "properties": {
                            "access_token": {"type": "string"},
                            "token_type": {"type": "string"},
                            "expires_at": {"type": ["string", "null"]},
                            "expires_in": {"type": ["integer", "null"]},
                            "scopes": {"type": "array", "items": {"type": "string"}},
                            "grant_id": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
}


def _parse_body(raw: bytes, content_type: str | None) -> tuple[int, bool]:
    if not raw.strip():
        return 300, False
    if content_type is None or not content_type.split(";")[0].strip().lower().endswith("json"):
        raise UnsupportedMediaType("send application/json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJson("the request body is not valid JSON") from None
    if not isinstance(body, dict) or set(body) - {"min_ttl", "force_refresh"}:
        raise InvalidInput("the body may hold only min_ttl and force_refresh")
    min_ttl = body.get("min_ttl", 300)
    force = body.get("force_refresh", False)
    if isinstance(min_ttl, bool) or not isinstance(min_ttl, int) or not 0 <= min_ttl <= 86_400:
        raise InvalidInput("min_ttl must be an integer between 0 and 86400")
    if not isinstance(force, bool):
        raise InvalidInput("force_refresh must be a boolean")
    return min_ttl, force


def _merge_query(query: bytes, raw: bytes, min_ttl: int, force: bool) -> tuple[int, bool]:
    """``?min_ttl=600&force_refresh=true`` mean what the body's fields mean; anything else
    in the query, or a field given both ways, is refused rather than silently ignored."""
    params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    names = [k for k, _ in params]
    unknown = sorted(set(names) - {"min_ttl", "force_refresh"})
    if unknown:
        raise InvalidInput(
            f"unknown query parameter(s): {', '.join(unknown)}; "
            "this endpoint takes min_ttl and force_refresh"
        )
    if len(names) != len(set(names)):
        raise InvalidInput("give each query parameter once")
    given = dict(params)
    body = orjson.loads(raw) if raw.strip() else {}
    if set(given) & set(body):
        raise InvalidInput("give min_ttl and force_refresh once: in the query or in the body")
    if "min_ttl" in given:
        value = given["min_ttl"]
        if not value.isascii() or not value.isdigit() or int(value) > 86_400:
            raise InvalidInput("min_ttl must be an integer between 0 and 86400")
        min_ttl = int(value)
    if "force_refresh" in given:
        flag = given["force_refresh"].lower()
        if flag not in ("true", "false", "1", "0"):
            raise InvalidInput("force_refresh must be true or false")
        force = flag in ("true", "1")
    return min_ttl, force


class _TokenResponse(Response):
    """The 200 answer, headers built directly (what ``Response`` would build, in its order)."""

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"cache-control", b"no-store"),
            (b"pragma", b"no-cache"),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]


async def _answer(
    rt: Runtime,
    principal: Principal,
    *,
    environment_id: str,
    grant_id: str,
    integration_id: str,
    provider: str,
    version: int,
    token_type: str,
    scopes: tuple[str, ...],
    expires_at: float | None,
    access_token: str,
) -> Response:
    now = rt.clock.now()
    # audited before the caller receives the secret (as Vault does)
    if rt.hotpath is not None:
        await rt.hotpath.audit_issued(
            environment_id=environment_id,
            actor=principal.actor,
            now=now,
            grant_id=grant_id,
            integration_id=integration_id,
            generation=version,
        )
    else:
        async with rt.engine.begin() as conn:
            await audit.record(
                conn,
                environment_id=environment_id,
                actor=principal.actor,
                action="token.issued",
                now=now,
                grant_id=grant_id,
                integration_id=integration_id,
                generation=version,
            )
    rt.metrics.served(provider).inc()
    payload = {
        "access_token": access_token,
        "token_type": token_type,
        "expires_at": _iso(expires_at),
        "expires_in": max(int(expires_at - now), 0) if expires_at is not None else None,
        "scopes": list(scopes),
        "grant_id": grant_id,
    }
    return _TokenResponse(orjson.dumps(payload))


async def _serve_hot(
    rt: Runtime, hot: HotPath, raw_key: str, gid: str | None, min_ttl: int, force: bool
) -> tuple[Principal, TokenRow] | Response:
    """PostgreSQL: the common case (an active grant whose token lives long enough) answered
    at once; anything else (refresh first, refuse) goes on in ``_serve`` with the same row:
    it holds what that decision needs (``refresh.engine.GrantState``), a refresh reads the
    whole grant under its lease."""
    parsed = parse_key(raw_key)
    key, row = await hot.read_token(parsed[0], gid) if parsed else (None, None)
    principal = verify(parsed, key)
    await ratelimit.enforce(rt, principal.key_id, "token")
    principal.require("credentials:read")
    if row is None or not principal.may_use_integration(row.integration_id):
        raise NotFound("no such grant")
    exp = row.access_token_expires_at
    if (
        # exactly when ensure_fresh would hand back the record as it is
        not force
        and row.access_token_ct is not None
        and (exp is None or exp - rt.clock.now() >= min_ttl)
        and row.status not in ("revoked", "invalid")
        and provider_has_access_token(rt, row.provider)
    ):
        token = rt.vault.open_str(
            row.access_token_ct, token_aad(row.environment_id, row.id, "access_token", row.version)
        )
        return await _answer(
            rt,
            principal,
            environment_id=row.environment_id,
            grant_id=row.id,
            integration_id=row.integration_id,
            provider=row.provider,
            version=row.version,
            token_type=row.token_type,
            scopes=row.scopes,
            expires_at=exp,
            access_token=token,
        )
    return principal, row


async def _serve(
    rt: Runtime,
    raw_key: str | None,
    grant_id: str,
    raw: bytes,
    content_type: str | None,
    query: bytes = b"",
) -> Response:
    if raw_key is None:
        raise Unauthenticated()
    min_ttl, force = _parse_body(raw, content_type)
    if query:
        min_ttl, force = _merge_query(query, raw, min_ttl, force)
    gid = grant_id if is_grant_id(grant_id) else None
    rec: GrantState | None
    if rt.hotpath is not None:
        hot = await _serve_hot(rt, rt.hotpath, raw_key, gid, min_ttl, force)
        if isinstance(hot, Response):
            return hot
        principal, rec = hot
    else:
        async with reading(rt.engine) as conn:
            principal = await authenticate(conn, raw_key)
            rec = await store.get(conn, principal.environment_id, gid) if gid else None
        await ratelimit.enforce(rt, principal.key_id, "token")
        principal.require("credentials:read")
    if rec is None or not principal.may_use_integration(rec.integration_id):
        raise NotFound("no such grant")
    if not provider_has_access_token(rt, rec.provider):
        raise_for_status(rec)
        raise NoAccessToken(
            "this grant holds credentials, not an access token: use POST "
            f"/v1/grants/{rec.id}/credentials"
        )
    fresh = await ensure_fresh(rt, rec, min_ttl=min_ttl, force=force)
    token = issued(rt, fresh)
    return await _answer(
        rt,
        principal,
        environment_id=fresh.environment_id,
        grant_id=token.grant_id,
        integration_id=fresh.integration_id,
        provider=fresh.provider,
        version=fresh.version,
        token_type=token.token_type,
        scopes=token.scopes,
        expires_at=token.expires_at,
        access_token=token.access_token,
    )


class _TokenEndpoint:
    """The raw ASGI endpoint: what ``grant_token`` does, without the framework's per-request cost.

    A class instance, not a function, so Starlette mounts it as an ASGI app as is.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _token_asgi(scope, receive, send)


async def _token_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    response = await answer(scope, b"".join(chunks))
    await response(scope, receive, send)


async def answer(scope: Scope, body: bytes) -> Response:
    """The answer to a token read whose whole body is ``body`` (raises domain errors)."""
    auth: list[str] = []
    content_type: str | None = None
    x_api_key = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            auth.append(value.decode("latin-1"))
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"x-api-key":
            x_api_key = True
    rt: Runtime = scope["app"].state.runtime
    raw_key = parse_bearer(auth)
    if raw_key is None:
        raise missing_key(auth, x_api_key)
    grant_id = scope["path_params"]["grant_id"]
    if not tracing.enabled():
        return await _serve(rt, raw_key, grant_id, body, content_type, scope["query_string"])
    with tracing.span("grantkeeper.token.read", grant_id=grant_id):
        return await _serve(rt, raw_key, grant_id, body, content_type, scope["query_string"])


#: the raw endpoint (``answer`` is what ``api.middleware.TokenFastPath`` calls ahead of
#: the framework)
endpoint = _TokenEndpoint()
# also matched first by the router (routes are tried in order), for an app built without
# the fast path; the FastAPI route below documents it
router.routes.append(Route(_PATH, endpoint, methods=["POST"], include_in_schema=False))


@router.post(_PATH, openapi_extra=_OPENAPI, response_class=Response)
async def grant_token(request: Request, grant_id: str) -> Response:
    raw_key = bearer(request)
    if raw_key is None:
        raise unauthenticated_request(request)
    with tracing.span("grantkeeper.token.read", grant_id=grant_id):
        return await _serve(
            request.app.state.runtime,
            raw_key,
            grant_id,
            await request.body(),
            request.headers.get("content-type"),
            request.url.query.encode("latin-1"),
        )
