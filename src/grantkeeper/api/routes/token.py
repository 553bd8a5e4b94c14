"""``POST /v1/grants/{id}/token``: the hot path.

Kept lean on purpose: one read transaction resolves the API key and the grant,
the body is parsed with orjson, and nothing goes through pydantic. Its OpenAPI
description is declared by hand so fuzzers and docs still see it.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from grantkeeper import audit
from grantkeeper.api.deps import bearer
from grantkeeper.apikeys import authenticate
from grantkeeper.errors import (
    InvalidInput,
    MalformedJson,
    NotFound,
    Unauthenticated,
    UnsupportedMediaType,
)
from grantkeeper.grants import is_grant_id
from grantkeeper.refresh.engine import ensure_fresh, issued
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as store
from grantkeeper.store.db import reading

router = APIRouter(tags=["grants"])

_OPENAPI: dict[str, Any] = {
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


@router.post("/v1/grants/{grant_id}/token", openapi_extra=_OPENAPI, response_class=Response)
async def grant_token(request: Request, grant_id: str) -> Response:
    rt: Runtime = request.app.state.runtime
    raw_key = bearer(request)
    if raw_key is None:
        raise Unauthenticated()
    min_ttl, force = _parse_body(await request.body(), request.headers.get("content-type"))
    async with reading(rt.engine) as conn:
        principal = await authenticate(conn, raw_key)
        principal.require("credentials:read")
        rec = (
            await store.get(conn, principal.environment_id, grant_id)
            if is_grant_id(grant_id)
            else None
        )
    if rec is None or not principal.may_use_integration(rec.integration_id):
        raise NotFound("no such grant")
    rec = await ensure_fresh(rt, rec, min_ttl=min_ttl, force=force)
    token = issued(rt, rec)
    now = rt.clock.now()
    # audited before the caller receives the secret (as Vault does)
    async with rt.engine.begin() as conn:
        await audit.record(
            conn,
            environment_id=rec.environment_id,
            actor=principal.actor,
            action="token.issued",
            now=now,
            grant_id=rec.id,
            integration_id=rec.integration_id,
            generation=rec.version,
        )
    rt.metrics.tokens_served.labels(rec.provider).inc()
    exp = token.expires_at
    payload = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_at": _iso(exp),
        "expires_in": max(int(exp - now), 0) if exp is not None else None,
        "scopes": list(token.scopes),
        "grant_id": token.grant_id,
    }
    return Response(
        orjson.dumps(payload),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _iso(ts: float | None) -> str | None:
    from grantkeeper.clock import iso

    return iso(ts)
