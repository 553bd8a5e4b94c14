"""
The SDK's exception hierarchy:

* GrantkeeperClientError
  x TransportError                       network trouble: connect, read, timeout
  x UnexpectedResponseError              the vault answered something unparseable
  x UnsupportedGrantKindError            auth() cannot stamp this kind (oauth1: use proxy)
  x APIError                             the vault answered with an error status
    + AuthenticationError                401: missing or wrong API key
    + PermissionDeniedError              403: the key lacks a scope or integration
      - TokenExportDisabledError         403 token_export_disabled
    + NotFoundError                      404
    + ConflictError                      409
      - GrantInvalidError                409 grant_invalid (exposes ``.failure``)
      - GrantRevokedError                409 grant_revoked
      - IntegrationInUseError            409 integration_in_use
    + GoneError                          410
      - TokensAlreadyRetrievedError      410 tokens_already_retrieved
    + ValidationError                    400 / 422
      - ReturnToNotAllowedError          422 return_to_not_allowed
      - RefreshTokenRejectedError        422 refresh_token_rejected
    + RateLimitedError                   429 (``.retry_after``)
    + ProviderUnavailableError           503 provider_unavailable (``.retry_after``)
    + ServerError                        any other 5xx

Error responses are RFC 9457 ``application/problem+json`` documents. The
``code`` member picks the class through a registry; a code this SDK does not
know falls back to the class for the HTTP status, so new server codes never
break old clients. The API key is never part of an exception's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from ._models import GrantFailure, parse_retry_after

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConflictError",
    "GoneError",
    "GrantInvalidError",
    "GrantRevokedError",
    "GrantkeeperClientError",
    "IntegrationInUseError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RefreshTokenRejectedError",
    "ReturnToNotAllowedError",
    "ServerError",
    "TokenExportDisabledError",
    "TokensAlreadyRetrievedError",
    "TransportError",
    "UnexpectedResponseError",
    "UnsupportedGrantKindError",
    "ValidationError",
    "error_from_response",
]


class GrantkeeperClientError(Exception):
    """Base class of every exception raised by ``grantkeeper.client``."""


class UnsupportedGrantKindError(GrantkeeperClientError):
    """``auth()`` cannot stamp this grant's kind: ``oauth1`` requests are signed with the
    consumer secret, which never leaves the vault; call the provider through the proxy."""


class TransportError(GrantkeeperClientError):
    """The vault could not be reached (connect, read or write failure, timeout).

    The underlying ``httpx`` exception is chained as ``__cause__``.
    """


class UnexpectedResponseError(GrantkeeperClientError):
    """A success response whose body does not match the API contract."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class APIError(GrantkeeperClientError):
    """The vault answered with an error status.

    Attributes mirror the problem document: ``status``, ``code``, ``title``,
    ``detail`` and ``type``; ``body`` is the whole decoded document (including
    extension members) and ``retry_after`` the parsed ``Retry-After`` header in
    seconds, if any.
    """

    #: The code(s) this class stands for in the registry (subclasses set it).
    codes: tuple[str, ...] = ()

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        type: str | None = None,  # RFC 9457 member name
        body: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.type = type
        self.body: Mapping[str, Any] = body if body is not None else {}
        self.retry_after = retry_after
        self.response = response

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"


class AuthenticationError(APIError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(APIError):
    """403: the API key lacks the scope or integration this call needs."""


class TokenExportDisabledError(PermissionDeniedError):
    """403 ``token_export_disabled``: the integration has ``token_export: never``."""

    codes = ("token_export_disabled",)


class NotFoundError(APIError):
    """404: no such resource in this environment."""


class ConflictError(APIError):
    """409: the resource's state forbids the operation."""


class GrantInvalidError(ConflictError):
    """409 ``grant_invalid``: the provider refused the refresh token for good.

    ``failure`` carries the grant's recorded failure (code, description, when);
    send the user through ``grants.reconnect`` to repair the grant.
    """

    codes = ("grant_invalid",)

    @property
    def failure(self) -> GrantFailure | None:
        raw = self.body.get("failure")
        if isinstance(raw, Mapping):
            try:
                return GrantFailure.from_json(raw)
            except (KeyError, TypeError, ValueError):
                return None
        return None


class GrantRevokedError(ConflictError):
    """409 ``grant_revoked``: the grant was deleted; it can no longer mint tokens."""

    codes = ("grant_revoked",)


class IntegrationInUseError(ConflictError):
    """409 ``integration_in_use``: grants still use the integration."""

    codes = ("integration_in_use",)


class GoneError(APIError):
    """410: the resource existed but is no longer available."""


class TokensAlreadyRetrievedError(GoneError):
    """410 ``tokens_already_retrieved``: a connect session's tokens export only once."""

    codes = ("tokens_already_retrieved",)


class ValidationError(APIError):
    """400 or 422: the request was malformed or failed validation."""


class ReturnToNotAllowedError(ValidationError):
    """422 ``return_to_not_allowed``: ``return_to`` is not in the integration's
    ``return_urls``."""

    codes = ("return_to_not_allowed",)


class RefreshTokenRejectedError(ValidationError):
    """422 ``refresh_token_rejected``: an imported refresh token failed verification."""

    codes = ("refresh_token_rejected",)


class RateLimitedError(APIError):
    """429: too many requests; ``retry_after`` says when to come back."""

    codes = ("rate_limited",)


class ProviderUnavailableError(APIError):
    """503 ``provider_unavailable``: the provider is unreachable and no valid
    token is stored; ``retry_after`` says when to try again."""

    codes = ("provider_unavailable",)


class ServerError(APIError):
    """5xx: the vault failed."""


def _registry() -> dict[str, type[APIError]]:
    registry: dict[str, type[APIError]] = {}
    stack: list[type[APIError]] = [APIError]
    while stack:
        cls = stack.pop()
        for code in cls.codes:
            registry[code] = cls
        stack.extend(cls.__subclasses__())
    return registry


#: ``code`` -> exception class.
ERROR_CODES: Mapping[str, type[APIError]] = _registry()

_BY_STATUS: Mapping[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    422: ValidationError,
    429: RateLimitedError,
}


def _class_for(status: int, code: str | None) -> type[APIError]:
    if code is not None and code in ERROR_CODES:
        return ERROR_CODES[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return APIError


def problem_body(response: httpx.Response) -> dict[str, Any]:
    """The decoded JSON object of ``response``, or ``{}`` if it is not one."""
    content_type = response.headers.get("content-type", "")
    if "json" not in content_type:
        return {}
    try:
        decoded = json.loads(response.content)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def error_from_response(response: httpx.Response) -> APIError:
    """Build the exception for an error ``response`` (it is not raised).

    Useful for proxy responses, which are returned unchanged.
    """
    body = problem_body(response)
    code = body.get("code") if isinstance(body.get("code"), str) else None
    title = body.get("title") if isinstance(body.get("title"), str) else None
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    problem_type = body.get("type") if isinstance(body.get("type"), str) else None
    status = response.status_code
    cls = _class_for(status, code)
    summary = detail or title or response.reason_phrase or "error"
    message = f"{status} {code}: {summary}" if code else f"{status}: {summary}"
    return cls(
        message,
        status=status,
        code=code,
        title=title,
        detail=detail,
        type=problem_type,
        body=body,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        response=response,
    )
