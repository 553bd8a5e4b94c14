"""Sans-I/O descriptions of every vault API call.

Each function returns a ``Call``: method, path, query, body, whether it is
safe to retry, and how to parse the success response. The sync and async
clients only differ in how they send a ``Call``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._exceptions import UnexpectedResponseError
from ._models import (
    AccessToken,
    AuditEvent,
    ConnectSession,
    ConnectSessionStatus,
    Credentials,
    ExportedTokens,
    Grant,
    Integration,
    Page,
    Provider,
    Revocation,
    WebhookEndpoint,
)

T = TypeVar("T")
M = TypeVar("M")

Params = dict[str, str | int]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Params | None = None
    json: Any = None
    idempotent: bool = False


def _seg(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("identifiers must be non-empty strings")
    return quote(value, safe="")


def _params(**values: Any) -> Params | None:
    out: Params = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return out or None


def _body(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _scopes(scopes: Sequence[str] | None) -> list[str] | None:
    if scopes is None:
        return None
    if isinstance(scopes, str):
        raise TypeError("scopes must be a list of strings, not a string")
    return list(scopes)


def _timestamp(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_of(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError as exc:
        raise UnexpectedResponseError(
            f"{response.status_code}: response body is not JSON", status=response.status_code
        ) from exc


def _parser(build: Callable[[Mapping[str, Any]], M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        data = json_of(response)
        try:
            if not isinstance(data, Mapping):
                raise TypeError("expected a JSON object")
            return build(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponseError(
                f"{response.status_code}: unexpected response body ({exc!r})",
                status=response.status_code,
            ) from exc

    return parse


def _list_parser(build: Callable[[Mapping[str, Any]], M]) -> Callable[[httpx.Response], list[M]]:
    def parse(data: Mapping[str, Any]) -> list[M]:
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("'data' must be a list")
        return [build(item) for item in items]

    return _parser(parse)


def _page_parser(
    build: Callable[[Mapping[str, Any]], M], offset: int | None
) -> Callable[[httpx.Response], Page[M]]:
    def parse(data: Mapping[str, Any]) -> Page[M]:
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("'data' must be a list")
        limit = data.get("limit")
        next_offset = data.get("next_offset")
        return Page(
            data=tuple(build(item) for item in items),
            limit=None if limit is None else int(limit),
            offset=int(data.get("offset", offset or 0)),
            next_offset=None if next_offset is None else int(next_offset),
        )

    return _parser(parse)


def _none(response: httpx.Response) -> None:
    return None


# -- providers -----------------------------------------------------------------


def list_providers(category: str | None, q: str | None) -> Call[list[Provider]]:
    return Call(
        "GET",
        "/v1/providers",
        _list_parser(Provider.from_json),
        params=_params(category=category, q=q),
        idempotent=True,
    )


def get_provider(name: str) -> Call[Provider]:
    return Call("GET", f"/v1/providers/{_seg(name)}", _parser(Provider.from_json), idempotent=True)


# -- integrations --------------------------------------------------------------


def put_integration(integration_id: str, fields: Mapping[str, Any]) -> Call[Integration]:
    body = {key: value for key, value in fields.items() if value is not None}
    for key in ("scopes", "return_urls"):
        if key in body:
            body[key] = _scopes(body[key])
    return Call(
        "PUT",
        f"/v1/integrations/{_seg(integration_id)}",
        _parser(Integration.from_json),
        json=body,
        idempotent=True,
    )


def get_integration(integration_id: str) -> Call[Integration]:
    return Call(
        "GET",
        f"/v1/integrations/{_seg(integration_id)}",
        _parser(Integration.from_json),
        idempotent=True,
    )


def list_integrations() -> Call[list[Integration]]:
    return Call("GET", "/v1/integrations", _list_parser(Integration.from_json), idempotent=True)


def delete_integration(integration_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/integrations/{_seg(integration_id)}", _none, idempotent=True)


# -- connect -------------------------------------------------------------------


def create_session(
    integration_id: str, user_id: str, return_to: str, scopes: Sequence[str] | None
) -> Call[ConnectSession]:
    return Call(
        "POST",
        "/v1/connect/sessions",
        _parser(ConnectSession.from_json),
        json=_body(
            integration_id=integration_id,
            user_id=user_id,
            return_to=return_to,
            scopes=_scopes(scopes),
        ),
    )


def get_session(session_id: str) -> Call[ConnectSessionStatus]:
    return Call(
        "GET",
        f"/v1/connect/sessions/{_seg(session_id)}",
        _parser(ConnectSessionStatus.from_json),
        idempotent=True,
    )


def export_tokens(session_id: str) -> Call[ExportedTokens]:
    # Not retried: the tokens are handed out exactly once.
    return Call(
        "POST",
        f"/v1/connect/sessions/{_seg(session_id)}/tokens",
        _parser(ExportedTokens.from_json),
    )


# -- grants --------------------------------------------------------------------


def list_grants(
    integration_id: str | None,
    user_id: str | None,
    status: str | None,
    limit: int | None,
    offset: int | None,
) -> Call[Page[Grant]]:
    return Call(
        "GET",
        "/v1/grants",
        _page_parser(Grant.from_json, offset),
        params=_params(
            integration_id=integration_id,
            user_id=user_id,
            status=status,
            limit=limit,
            offset=offset,
        ),
        idempotent=True,
    )


def get_grant(grant_id: str) -> Call[Grant]:
    return Call("GET", f"/v1/grants/{_seg(grant_id)}", _parser(Grant.from_json), idempotent=True)


def import_grant(
    integration_id: str,
    user_id: str,
    refresh_token: str,
    access_token: str | None,
    expires_at: datetime | str | None,
    scopes: Sequence[str] | None,
    verify: bool,
) -> Call[Grant]:
    return Call(
        "POST",
        "/v1/grants",
        _parser(Grant.from_json),
        json=_body(
            integration_id=integration_id,
            user_id=user_id,
            refresh_token=refresh_token,
            access_token=access_token,
            expires_at=_timestamp(expires_at),
            scopes=_scopes(scopes),
            verify=bool(verify),
        ),
    )


def grant_token(grant_id: str, min_ttl: int | None, force_refresh: bool) -> Call[AccessToken]:
    if min_ttl is not None and (isinstance(min_ttl, bool) or int(min_ttl) < 0):
        raise ValueError("min_ttl must be a non-negative number of seconds")
    body: dict[str, Any] = {}
    if min_ttl is not None:
        body["min_ttl"] = int(min_ttl)
    if force_refresh:
        body["force_refresh"] = True
    # Safe to retry: minting a token twice hands out a valid token twice.
    return Call(
        "POST",
        f"/v1/grants/{_seg(grant_id)}/token",
        _parser(AccessToken.from_json),
        json=body,
        idempotent=True,
    )


def grant_credentials(grant_id: str) -> Call[Credentials]:
    # Safe to retry like the token: reading credentials changes nothing but the audit trail.
    return Call(
        "POST",
        f"/v1/grants/{_seg(grant_id)}/credentials",
        _parser(Credentials.from_json),
        json={},
        idempotent=True,
    )


def reconnect_grant(grant_id: str, return_to: str) -> Call[ConnectSession]:
    return Call(
        "POST",
        f"/v1/grants/{_seg(grant_id)}/reconnect",
        _parser(ConnectSession.from_json),
        json={"return_to": return_to},
    )


def delete_grant(grant_id: str) -> Call[Revocation]:
    return Call(
        "DELETE", f"/v1/grants/{_seg(grant_id)}", _parser(Revocation.from_json), idempotent=True
    )


# -- webhook endpoints ---------------------------------------------------------


def create_webhook_endpoint(url: str, events: Sequence[str]) -> Call[WebhookEndpoint]:
    return Call(
        "POST",
        "/v1/webhook-endpoints",
        _parser(WebhookEndpoint.from_json),
        json={"url": url, "events": _scopes(events)},
    )


def list_webhook_endpoints() -> Call[list[WebhookEndpoint]]:
    return Call(
        "GET", "/v1/webhook-endpoints", _list_parser(WebhookEndpoint.from_json), idempotent=True
    )


def get_webhook_endpoint(endpoint_id: str) -> Call[WebhookEndpoint]:
    return Call(
        "GET",
        f"/v1/webhook-endpoints/{_seg(endpoint_id)}",
        _parser(WebhookEndpoint.from_json),
        idempotent=True,
    )


def delete_webhook_endpoint(endpoint_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/webhook-endpoints/{_seg(endpoint_id)}", _none, idempotent=True)


# -- audit ---------------------------------------------------------------------


def list_audit_events(
    grant_id: str | None, limit: int | None, offset: int | None
) -> Call[Page[AuditEvent]]:
    return Call(
        "GET",
        "/v1/audit-events",
        _page_parser(AuditEvent.from_json, offset),
        params=_params(grant_id=grant_id, limit=limit, offset=offset),
        idempotent=True,
    )


# -- proxy ---------------------------------------------------------------------

#: Vault problem codes a proxy call raises instead of returning: they cannot
#: come from the provider, and they mean the grant cannot be used as it is.
PROXY_RAISED_CODES = frozenset({"grant_invalid", "grant_revoked", "provider_unavailable"})


def proxy_path(grant_id: str, path: str) -> str:
    return f"/v1/proxy/{_seg(grant_id)}/{path.lstrip('/')}"
