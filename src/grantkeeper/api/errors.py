"""The one mapping from errors to RFC 9457 ``application/problem+json``.

Never a stack trace, never a secret: unexpected exceptions become a generic
500 with an opaque id that is also logged (without request data).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from grantkeeper.errors import (
    GrantkeeperError,
    IntegrationMisconfigured,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RefreshBusy,
    StoreUnavailable,
    TokenExchangeError,
)
from grantkeeper.store.unavailable import UNAVAILABLE, is_unavailable

__all__ = [
    "domain_error_response",
    "install_error_handlers",
    "problem",
    "problem_response",
    "store_error_response",
    "unexpected_error_response",
]

log = logging.getLogger("grantkeeper.api")

_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthenticated", "Missing or invalid API key"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    410: ("gone", "Gone"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("invalid_input", "Invalid input"),
    424: ("integration_misconfigured", "The provider refuses the integration's client"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("unavailable", "Service unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}


def problem(status: int, code: str, title: str, detail: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://grantkeeper.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
    }
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    h = {"Cache-Control": "no-store"}
    if headers:
        h.update(headers)
    return Response(
        orjson.dumps(problem(status, code, title, detail, **extra)),
        status_code=status,
        media_type="application/problem+json",
        headers=h,
    )


def oauth_error_response(exc: TokenExchangeError) -> Response:
    """RFC 6749 section 5.2: ``{"error", "error_description"}``, not problem+json."""
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="grantkeeper"'
    return Response(
        orjson.dumps({"error": exc.error, "error_description": exc.detail}),
        status_code=exc.http_status,
        media_type="application/json",
        headers=headers,
    )


def error_response(exc: GrantkeeperError) -> Response:
    if isinstance(exc, TokenExchangeError):
        return oauth_error_response(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, ProviderUnavailable | RateLimited | IntegrationMisconfigured):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, RefreshBusy | StoreUnavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="grantkeeper"'
    safe_extra = {k: v for k, v in exc.extra.items() if k in ("failure", "setting", "errors")}
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, headers=headers, **safe_extra
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors()[:20]:
        loc = [str(p) for p in e.get("loc", ())]
        # never echo the input back: it may be a secret
        out.append({"location": loc, "message": str(e.get("msg", ""))[:200], "type": e.get("type")})
    return out


def domain_error_response(exc: GrantkeeperError) -> Response:
    """A domain error as the API answers it (logged when it is ours)."""
    # provider-side and transient failures are the provider's or the moment's, not ours
    if exc.status >= 500 and not isinstance(exc, ProviderError | RefreshBusy | StoreUnavailable):
        log.error("request failed: %s (%s)", exc.code, type(exc).__name__)
    return error_response(exc)


def unexpected_error_response(exc: BaseException) -> Response:
    """Any other failure: 500 with a reference to the log line, never the error itself
    (but the database being unavailable, whatever class it arrives as, is a 503)."""
    if is_unavailable(exc):
        return store_error_response(exc)
    ref = secrets.token_hex(6)
    log.error("unexpected error %s: %s", ref, type(exc).__name__, exc_info=False)
    return problem_response(
        500, "internal_error", "Internal error", f"unexpected error (ref {ref})"
    )


def store_error_response(exc: BaseException) -> Response:
    """The database is down, restarting or its pool is exhausted: transient, never a 500."""
    log.warning("database unavailable: %s", type(exc).__name__)
    return error_response(StoreUnavailable("the database is unavailable; retry shortly"))


def install_error_handlers(app: FastAPI) -> None:
    async def on_domain(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GrantkeeperError)
        return domain_error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return problem_response(
                400, "malformed_json", "Malformed JSON body", "the request body is not valid JSON"
            )
        return problem_response(
            422, "invalid_input", "Invalid input", "the request failed validation", errors=errors
        )

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 500 else title
        return problem_response(exc.status_code, code, title, detail, headers=exc.headers)

    async def on_store(_: Request, exc: Exception) -> Response:
        return store_error_response(exc)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        return unexpected_error_response(exc)

    _document_problems(app)
    app.add_exception_handler(GrantkeeperError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, on_store)
    app.add_exception_handler(Exception, on_unexpected)


# ---------------------------------------------------------------- OpenAPI

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details with a stable machine-readable code",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "failure": {"type": "object"},
    },
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_COMMON = (400, 401, 403, 404, 422)
_WITH_BODY = (413, 415)
_BY_OPERATION: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/grants/{grant_id}/token"): (409, 424, 429, 503),
    ("post", "/v1/connect/sessions"): (429,),
    ("post", "/v1/connect/sessions/{session_id}/tokens"): (410,),
    ("post", "/v1/grants/{grant_id}/reconnect"): (409,),
    ("put", "/v1/integrations/{integration_id}"): (409, 502, 503),
    ("delete", "/v1/integrations/{integration_id}"): (409,),
    ("post", "/v1/grants"): (409, 502, 503),
    ("delete", "/v1/grants/{grant_id}"): (409, 503),
}
_PROXY = (409, 413, 429, 502, 503, 504)


def _document_problems(app: FastAPI) -> None:
    """Document the error responses every operation can give, as ``application/problem+json``.

    FastAPI documents only 422 (with its own shape); the API answers every error with a
    problem body, so schema-driven clients and fuzzers see what the server really sends.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
        for path, item in spec.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                if path == "/readyz":
                    statuses: tuple[int, ...] = (503,)
                elif path.startswith("/provider-events/"):
                    statuses = (400, 401, 404, 413, 422, 429)
                elif not path.startswith("/v1/"):
                    continue
                else:
                    statuses = _COMMON + _BY_OPERATION.get((method, path), ())
                    if method in ("post", "put", "patch"):
                        statuses += _WITH_BODY
                    if path.startswith("/v1/proxy/"):
                        statuses += _PROXY + _WITH_BODY
                for status in sorted(set(statuses)):
                    code, title = _HTTP_CODES.get(status, ("error", "Error"))
                    response: dict[str, Any] = {
                        "description": title,
                        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
                    }
                    if status in (424, 429, 503):
                        response["headers"] = {
                            "Retry-After": {
                                "description": "seconds to wait before retrying",
                                "schema": {"type": "integer"},
                            }
                        }
                    op["responses"][str(status)] = response
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
