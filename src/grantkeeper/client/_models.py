"""Typed, immutable results of the vault API.

Every model is a frozen dataclass built by ``from_json``; timestamps become
timezone-aware ``datetime`` objects (UTC). Members the server sends that a
model does not name are kept in ``extra`` so newer servers lose nothing.
Secret values (tokens, webhook secrets) are left out of ``repr``.
"""

from __future__ import annotations

import base64
import email.utils
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar

__all__ = [
    "AccessToken",
    "AuditEvent",
    "Credentials",
    "ConnectSession",
    "ConnectSessionStatus",
    "ExportedTokens",
    "Grant",
    "GrantFailure",
    "Integration",
    "Page",
    "Provider",
    "Revocation",
    "WebhookEndpoint",
    "parse_datetime",
    "parse_retry_after",
]

T = TypeVar("T")


def parse_datetime(value: Any) -> datetime | None:
    """ISO 8601 string -> aware ``datetime`` (naive values are taken as UTC)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _required_datetime(value: Any) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError("missing timestamp")
    return parsed


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` (delta-seconds or HTTP-date) -> seconds, or ``None``."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _strs(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError("expected a list of strings")
    return tuple(str(item) for item in value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _extra(data: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    return {key: value for key, value in data.items() if key not in known}


def _fields(*names: str) -> frozenset[str]:
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Provider:
    """A catalog entry."""

    name: str
    display_name: str
    auth_mode: str
    categories: tuple[str, ...]
    docs_url: str | None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields("name", "display_name", "auth_mode", "categories", "docs_url")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            name=str(data["name"]),
            display_name=str(data.get("display_name") or data["name"]),
            auth_mode=str(data.get("auth_mode", "oauth2")),
            categories=_strs(data.get("categories")),
            docs_url=_opt_str(data.get("docs_url")),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class Integration:
    """One environment's use of a provider. The client secret is never returned."""

    id: str
    provider: str
    client_id: str
    scopes: tuple[str, ...]
    return_urls: tuple[str, ...]
    client_secret_set: bool
    callback_url: str | None
    token_export: str
    authorization_params: Mapping[str, Any]
    issuer: str | None
    endpoints: Mapping[str, Any] | None
    api_base_url: str | None
    created_at: datetime | None
    updated_at: datetime | None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields(
        "id",
        "provider",
        "client_id",
        "scopes",
        "return_urls",
        "client_secret_set",
        "callback_url",
        "token_export",
        "authorization_params",
        "issuer",
        "endpoints",
        "api_base_url",
        "created_at",
        "updated_at",
    )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        endpoints = data.get("endpoints")
        return cls(
            id=str(data["id"]),
            provider=str(data["provider"]),
            client_id=str(data.get("client_id", "")),
            scopes=_strs(data.get("scopes")),
            return_urls=_strs(data.get("return_urls")),
            client_secret_set=bool(data.get("client_secret_set", False)),
            callback_url=_opt_str(data.get("callback_url")),
            token_export=str(data.get("token_export") or "never"),
            authorization_params=dict(data.get("authorization_params") or {}),
            issuer=_opt_str(data.get("issuer")),
            endpoints=dict(endpoints) if isinstance(endpoints, Mapping) else None,
            api_base_url=_opt_str(data.get("api_base_url")),
            created_at=parse_datetime(data.get("created_at")),
            updated_at=parse_datetime(data.get("updated_at")),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class ConnectSession:
    """A freshly created connect session: send the user to ``connect_url``."""

    id: str
    connect_url: str
    expires_at: datetime | None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields("id", "connect_url", "expires_at")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=str(data["id"]),
            connect_url=str(data["connect_url"]),
            expires_at=parse_datetime(data.get("expires_at")),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class ConnectSessionStatus:
    """Where a connect session stands: ``pending``, ``completed`` or ``failed``."""

    id: str
    status: str
    grant_id: str | None
    error: str | None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields("id", "status", "grant_id", "error")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        error = data.get("error")
        if isinstance(error, Mapping):  # tolerate {"code": ..., "description": ...}
            error = error.get("code") or error.get("error")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            grant_id=_opt_str(data.get("grant_id")),
            error=_opt_str(error),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class ExportedTokens:
    """The provider's token response, exported once for ``token_export: once``."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime | None
    scopes: tuple[str, ...]
    id_token: str | None = field(repr=False)
    token_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields(
        "access_token", "refresh_token", "expires_at", "scopes", "id_token", "token_type"
    )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            access_token=str(data["access_token"]),
            refresh_token=_opt_str(data.get("refresh_token")),
            expires_at=parse_datetime(data.get("expires_at")),
            scopes=_strs(data.get("scopes")),
            id_token=_opt_str(data.get("id_token")),
            token_type=_opt_str(data.get("token_type")),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class GrantFailure:
    """Why a grant became ``invalid``."""

    code: str
    description: str | None
    at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            code=str(data["code"]),
            description=_opt_str(data.get("description")),
            at=parse_datetime(data.get("at")),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """One end user's authorization of one integration (never carries a token)."""

    id: str
    integration_id: str
    provider: str
    user_id: str
    provider_account_id: str | None
    status: str
    scopes: tuple[str, ...]
    access_token_expires_at: datetime | None
    has_refresh_token: bool
    last_refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    failure: GrantFailure | None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields(
        "id",
        "integration_id",
        "provider",
        "user_id",
        "provider_account_id",
        "status",
        "scopes",
        "access_token_expires_at",
        "has_refresh_token",
        "last_refreshed_at",
        "created_at",
        "updated_at",
        "failure",
    )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        failure = data.get("failure")
        return cls(
            id=str(data["id"]),
            integration_id=str(data["integration_id"]),
            provider=str(data["provider"]),
            user_id=str(data["user_id"]),
            provider_account_id=_opt_str(data.get("provider_account_id")),
            status=str(data["status"]),
            scopes=_strs(data.get("scopes")),
            access_token_expires_at=parse_datetime(data.get("access_token_expires_at")),
            has_refresh_token=bool(data.get("has_refresh_token", False)),
            last_refreshed_at=parse_datetime(data.get("last_refreshed_at")),
            created_at=_required_datetime(data["created_at"]),
            updated_at=_required_datetime(data["updated_at"]),
            failure=GrantFailure.from_json(failure) if isinstance(failure, Mapping) else None,
            extra=_extra(data, cls._KNOWN),
        )

    @property
    def is_active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A provider access token minted by ``POST /v1/grants/{id}/token``.

    ``access_token`` is omitted from ``repr``; ``str()`` of the object does not
    reveal it either. Use ``authorization`` for a ready-made header value.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime | None
    expires_in: int | None
    scopes: tuple[str, ...]
    grant_id: str
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields("access_token", "token_type", "expires_at", "expires_in", "scopes", "grant_id")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            access_token=str(data["access_token"]),
            token_type=str(data.get("token_type") or "Bearer"),
            expires_at=parse_datetime(data.get("expires_at")),
            expires_in=_opt_int(data.get("expires_in")),
            scopes=_strs(data.get("scopes")),
            grant_id=str(data["grant_id"]),
            extra=_extra(data, cls._KNOWN),
        )

    @property
    def authorization(self) -> str:
        """``Authorization`` header value: ``Bearer <token>``."""
        return f"Bearer {self.access_token}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A grant's credentials from ``POST /v1/grants/{id}/credentials``, whatever its kind.

    ``type`` is the grant's auth mode; ``values`` the kind's fields (``api_key`` and extras;
    ``username``/``password``; ``consumer_key``/``oauth_token``/``oauth_token_secret``; or
    the ``/token`` fields). Never shown by ``repr``.
    """

    type: str
    values: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            type=str(data.get("type") or ""),
            values={k: v for k, v in data.items() if k != "type"},
        )

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    @property
    def authorization(self) -> str | None:
        """A ready ``Authorization`` value where the kind has a standard one: ``Bearer`` for
        access tokens and API keys, ``Basic`` for ``basic``; None for ``oauth1`` (each request
        must be signed)."""
        if "access_token" in self.values:
            return f"Bearer {self.values['access_token']}"
        if self.type == "basic":
            raw = f"{self.values.get('username', '')}:{self.values.get('password', '')}"
            return "Basic " + base64.b64encode(raw.encode()).decode()
        if "api_key" in self.values:
            return f"Bearer {self.values['api_key']}"
        return None


@dataclass(frozen=True, slots=True)
class Revocation:
    """Result of ``DELETE /v1/grants/{id}``.

    ``provider_revocation`` is ``succeeded``, ``failed`` or ``unsupported``;
    ``already_revoked`` is true when the grant had been revoked before this call (the
    outcome is then the first revocation's).
    """

    id: str
    status: str
    provider_revocation: str
    already_revoked: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            provider_revocation=str(data["provider_revocation"]),
            already_revoked=bool(data.get("already_revoked", False)),
        )


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A webhook endpoint. ``secret`` (``whsec_...``) is only set on creation."""

    id: str
    url: str
    events: tuple[str, ...]
    secret: str | None = field(default=None, repr=False)
    created_at: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields("id", "url", "events", "secret", "created_at")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=str(data["id"]),
            url=str(data["url"]),
            events=_strs(data.get("events")),
            secret=_opt_str(data.get("secret")),
            created_at=parse_datetime(data.get("created_at")),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who (API key id) did what (``action``) to which grant, when (``at``)."""

    id: str
    action: str
    grant_id: str | None
    api_key_id: str | None
    at: datetime | None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = _fields(
        "id",
        "action",
        "event",
        "type",
        "grant_id",
        "api_key_id",
        "at",
        "created_at",
        "timestamp",
    )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        action = data.get("action", data.get("event", data.get("type", "")))
        when = data.get("at", data.get("created_at", data.get("timestamp")))
        return cls(
            id=str(data["id"]),
            action=str(action),
            grant_id=_opt_str(data.get("grant_id")),
            api_key_id=_opt_str(data.get("api_key_id")),
            at=parse_datetime(when),
            extra=_extra(data, cls._KNOWN),
        )


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: ``data`` plus the offsets to fetch the next one.

    Iterating a page yields its items; ``next_offset`` is ``None`` on the last page.
    """

    data: tuple[T, ...]
    limit: int | None
    offset: int
    next_offset: int | None

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def has_more(self) -> bool:
        return self.next_offset is not None
