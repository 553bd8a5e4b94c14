"""Typed rows returned by the store (never wire models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ApiKeyRecord", "ConnectSessionRecord", "GrantRecord", "IntegrationRecord"]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    environment_id: str
    name: str
    secret_hash: bytes
    scopes: tuple[str, ...]
    integration_ids: tuple[str, ...] | None
    created_at: float
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class IntegrationRecord:
    environment_id: str
    id: str
    provider: str
    display_name: str | None
    client_id: str
    client_secret_ct: bytes | None
    scopes: tuple[str, ...]
    return_urls: tuple[str, ...]
    authorization_params: dict[str, str]
    issuer: str | None
    endpoints: dict[str, str] | None
    settings: dict[str, str]
    api_base_url: str | None
    token_export: str
    connect_page: bool
    created_at: float
    updated_at: float
    provider_events_secret_ct: bytes | None = None
    health_probe_interval: int | None = None
    #: MCP integrations only: what discovery and registration found (no secret)
    mcp: dict[str, Any] | None = None
    registration_token_ct: bytes | None = None
    client_access: bool = False
    stamp: dict[str, Any] | None = None
    verify_request: dict[str, Any] | None = None
    app_id: str | None = None
    private_key_ct: bytes | None = None
    token_params: dict[str, str] | None = None
    failure_code: str | None = None
    failure_description: str | None = None
    failed_at: float | None = None
    retry_at: float | None = None
    failure_attempts: int = 0


@dataclass(frozen=True, slots=True)
class GrantRecord:
    id: str
    environment_id: str
    integration_id: str
    provider: str
    user_id: str
    provider_account_id: str
    status: str
    scopes: tuple[str, ...]
    token_type: str
    access_token_ct: bytes | None
    refresh_token_ct: bytes | None
    id_token_ct: bytes | None
    access_token_expires_at: float | None
    version: int
    last_refreshed_at: float | None
    refresh_due_at: float | None
    lease_owner: str | None
    lease_until: float | None
    refresh_attempts: int
    retry_at: float | None
    failure_code: str | None
    failure_description: str | None
    failed_at: float | None
    token_extra: dict[str, Any] = field(default_factory=dict)
    api_base_url: str | None = None
    created_via: str = "connect"
    created_at: float = 0.0
    updated_at: float = 0.0
    revoked_at: float | None = None
    refresh_token_expires_at: float | None = None
    expiry_warn_at: float | None = None
    expiry_warned_for: float | None = None
    probe_due_at: float | None = None
    credentials_ct: bytes | None = None

    @property
    def has_refresh_token(self) -> bool:
        return self.refresh_token_ct is not None


@dataclass(frozen=True, slots=True)
class ConnectSessionRecord:
    id: str
    environment_id: str
    integration_id: str
    user_id: str
    return_to: str
    scopes: tuple[str, ...] | None
    status: str
    url_token_hash: bytes
    state_hash: bytes | None
    verifier_ct: bytes | None
    nonce_hash: bytes | None
    expected_issuer: str | None
    consent: bool
    reconnect_grant_id: str | None
    grant_id: str | None
    error: str | None
    error_description: str | None
    created_by: str | None
    created_at: float
    expires_at: float
    completed_at: float | None
    export_ct: bytes | None
    export_expires_at: float | None
    export_status: str
