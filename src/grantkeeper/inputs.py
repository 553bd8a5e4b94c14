"""Validated inputs shared by the HTTP API, the admin UI and the CLI.

Unknown fields are rejected; strings that reach the database are checked for
control characters here (PostgreSQL refuses NUL bytes with a 500 otherwise).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from grantkeeper.providers.catalog import StampSpec, VerifyRequest

__all__ = [
    "RESERVED_AUTHORIZATION_PARAMS",
    "CreateConnectSession",
    "CreateWebhookEndpoint",
    "EndpointsInput",
    "ImportGrant",
    "IntegrationInput",
    "Reconnect",
    "TokenRequest",
    "INTEGRATION_ID",
    "UserId",
]

INTEGRATION_ID = r"[a-z0-9][a-z0-9_-]{0,62}"
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")  # RFC 6749 3.3 scope-token


def _printable(v: str) -> str:
    if any(
        (ord(c) < 0x20)
        or (0x7F <= ord(c) < 0xA0)
        or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
        for c in v
    ):
        raise ValueError("must not contain control or bidi-override characters")
    return v


def _scope_list(v: list[str]) -> list[str]:
    for s in v:
        if not _SCOPE.fullmatch(s):
            raise ValueError(f"invalid scope token {s[:40]!r}")
    return list(dict.fromkeys(v))


#: authorization request parameters the vault sets itself: an integration's
#: ``authorization_params`` may not name them (compared case-insensitively)
RESERVED_AUTHORIZATION_PARAMS = frozenset(
    {
        "state",
        "redirect_uri",
        "client_id",
        "response_type",
        "response_mode",
        "code_challenge",
        "code_challenge_method",
        "nonce",
        "scope",
        "request",
        "request_uri",
    }
)


def _no_reserved_params(v: dict[str, str]) -> dict[str, str]:
    taken = sorted(k for k in v if k.lower() in RESERVED_AUTHORIZATION_PARAMS)
    if taken:
        raise ValueError(
            f"authorization_params must not set {', '.join(taken)}: the vault sets "
            "these itself (use 'scopes' for the scope)"
        )
    return v


#: token request parameters the vault sets itself: an integration's ``token_params`` may
#: not name them (compared case-insensitively)
RESERVED_TOKEN_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "assertion",
        "scope",
        "code",
        "code_verifier",
        "redirect_uri",
        "refresh_token",
    }
)


def _no_reserved_token_params(v: dict[str, str]) -> dict[str, str]:
    taken = sorted(k for k in v if k.lower() in RESERVED_TOKEN_PARAMS)
    if taken:
        raise ValueError(
            f"token_params must not set {', '.join(taken)}: the vault sets these itself "
            "(use 'scopes' for the scope)"
        )
    return v


Printable = Annotated[str, AfterValidator(_printable)]
UserId = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_printable)]
Scopes = Annotated[list[str], Field(max_length=100), AfterValidator(_scope_list)]
Url = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_printable)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class EndpointsInput(_In):
    authorization_url: Url | None = None
    token_url: Url | None = None
    #: OAuth 1.0a (RFC 5849 2.1, 2.3)
    request_token_url: Url | None = None
    access_token_url: Url | None = None
    revocation_url: Url | None = None
    userinfo_url: Url | None = None
    token_endpoint_auth_method: (
        Literal["client_secret_basic", "client_secret_post", "none"] | None
    ) = None


class IntegrationInput(_In):
    provider: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    ]
    #: required for the authorization-code kinds (an ``mcp`` integration may register
    #: itself); optional for the others
    client_id: (
        Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_printable)] | None
    ) = None
    client_secret: (
        Annotated[str, Field(min_length=1, max_length=4000), AfterValidator(_printable)] | None
    ) = None
    scopes: Scopes = Field(default_factory=list)
    #: at least one for the code flow (checked per kind in ``put_integration``)
    return_urls: Annotated[list[Url], Field(max_length=50)] = Field(default_factory=list)
    authorization_params: Annotated[
        dict[
            Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
            Annotated[str, Field(max_length=500), AfterValidator(_printable)],
        ],
        Field(max_length=30),
        AfterValidator(_no_reserved_params),
    ] = Field(default_factory=dict)
    #: extra token-request parameters (client_credentials, jwt_bearer: Auth0's and Box's
    #: ``audience``, RFC 8707 ``resource``); over the catalog's ``token_params``
    token_params: Annotated[
        dict[
            Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
            Annotated[str, Field(max_length=500), AfterValidator(_printable)],
        ],
        Field(max_length=30),
        AfterValidator(_no_reserved_token_params),
    ] = Field(default_factory=dict)
    issuer: Url | None = None
    endpoints: EndpointsInput | None = None
    api_base_url: Url | None = None
    #: ``mcp`` integrations: the remote MCP server's endpoint (the protected resource)
    server_url: Url | None = None
    token_export: Literal["never", "once"] = "never"
    #: values for the provider's templated URLs (tenant, subdomain, ...)
    settings: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")],
        Annotated[str, Field(max_length=200), AfterValidator(_printable)],
    ] = Field(default_factory=dict, max_length=20)
    display_name: Annotated[str, Field(max_length=200), AfterValidator(_printable)] | None = None
    #: show the Connect page (app, provider, access asked) before redirecting to the provider
    connect_page: bool = False
    #: verifies the provider's own event notifications (Slack signing secret, GitHub
    #: webhook secret); write-only, omitted on update = keep it
    provider_events_secret: (
        Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_printable)] | None
    ) = None
    #: seconds between health probes of each grant (a cheap authenticated call); None: off
    health_probe_interval: Annotated[int, Field(ge=300, le=30 * 86_400)] | None = None
    #: end users may fetch their own access tokens from a browser (``POST /oauth/token``)
    client_access: bool = False
    #: credential kinds: how the proxy stamps the credential (overrides the catalog's)
    stamp: StampSpec | None = None
    #: credential kinds: the request that proves a credential before it is saved
    verify_request: VerifyRequest | None = None
    #: github_app: the app's id and private key (PEM, write-only)
    app_id: Annotated[str, Field(pattern=r"^[0-9]{1,20}$")] | None = None
    private_key: Annotated[str, Field(min_length=1, max_length=16000)] | None = None


class CreateConnectSession(_In):
    integration_id: Annotated[str, Field(pattern=f"^{INTEGRATION_ID}$")]
    user_id: UserId
    return_to: Url
    scopes: Scopes | None = None


class Reconnect(_In):
    return_to: Url


class TokenRequest(_In):
    min_ttl: Annotated[int, Field(ge=0, le=86_400)] = 300
    force_refresh: bool = False


class ImportGrant(_In):
    """``POST /v1/grants``: a refresh token (code kinds) or ``credentials`` (every other kind)."""

    integration_id: Annotated[str, Field(pattern=f"^{INTEGRATION_ID}$")]
    user_id: UserId
    refresh_token: (
        Annotated[str, Field(min_length=1, max_length=8000), AfterValidator(_printable)] | None
    ) = None
    #: the kind's credential object (CONTRACT "Credential kinds"); checked by the kind
    credentials: Annotated[dict[str, Any], Field(max_length=20)] | None = None
    access_token: (
        Annotated[str, Field(min_length=1, max_length=16000), AfterValidator(_printable)] | None
    ) = None
    expires_at: Annotated[str, Field(max_length=40)] | None = None
    scopes: Scopes | None = None
    verify: bool = True
    provider_account_id: (
        Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_printable)] | None
    ) = None


WEBHOOK_EVENTS = (
    "grant.created",
    "grant.updated",
    "grant.invalid",
    "grant.recovered",
    "grant.deleted",
    "grant.expiring",
)


class CreateWebhookEndpoint(_In):
    url: Url
    events: Annotated[
        list[
            Literal[
                "grant.created",
                "grant.updated",
                "grant.invalid",
                "grant.recovered",
                "grant.deleted",
                "grant.expiring",
                "*",
            ]
        ],
        Field(min_length=1, max_length=10),
    ]
