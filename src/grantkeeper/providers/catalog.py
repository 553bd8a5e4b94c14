"""The provider catalog: one TOML file per provider under ``specs/``, validated by pydantic.

Every entry is data. What data cannot express lives in :mod:`grantkeeper.providers.quirks`
as a named hook, referenced from the entry by name (``hooks = {point = "name"}``).

Templated URLs carry ``{setting}`` placeholders (``{tenant}``, ``{subdomain}``, ``{shop}`` ...)
that :meth:`ProviderSpec.resolve` fills from integration settings. Each setting has a regular
expression its value must fully match, and every value must in addition be made only of
``[A-Za-z0-9._-]``, so a value can never add a path, query, user-info or port to a URL.

Loading is lazy: nothing is read at import time; :func:`load_catalog` reads and caches.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from grantkeeper.errors import CatalogError, InvalidProviderSettings, UnknownProvider

__all__ = [
    "CATEGORIES",
    "CODE_MODES",
    "GENERIC_NAMES",
    "MINTING_MODES",
    "AccountIdSpec",
    "AssertionSpec",
    "AuthMode",
    "CredentialField",
    "Catalog",
    "ProviderSpec",
    "Quirk",
    "RefreshSpec",
    "ResolvedEndpoints",
    "Setting",
    "Source",
    "StampSpec",
    "TokenAuthMethod",
    "VerifyRequest",
    "load_catalog",
    "load_catalog_from",
    "stamp_problem",
]

AuthMode = Literal[
    "oauth2",
    "oidc",
    "client_credentials",
    "jwt_bearer",
    "api_key",
    "basic",
    "oauth1",
    "github_app",
    "mcp",
]
#: the authorization-code kinds (the OAuth dance through the connect URL)
CODE_MODES: frozenset[str] = frozenset({"oauth2", "oidc", "mcp"})
#: kinds whose access tokens the vault mints itself (no refresh token, ever)
MINTING_MODES: frozenset[str] = frozenset({"client_credentials", "jwt_bearer", "github_app"})
#: entries configured wholly on the integration, one per kind (CONTRACT "Credential kinds")
GENERIC_NAMES: frozenset[str] = frozenset(
    {"oidc", "oauth2", "mcp", "api_key", "basic", "client_credentials", "jwt_bearer", "oauth1"}
)
TokenAuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]

#: The fixed category vocabulary. Every entry's ``categories`` must come from here.
CATEGORIES: frozenset[str] = frozenset(
    {
        "accounting",
        "advertising",
        "analytics",
        "calendar",
        "chat",
        "cloud",
        "crm",
        "design",
        "dev-tools",
        "documents",
        "e-commerce",
        "education",
        "email",
        "esignature",
        "finance",
        "forms",
        "gaming",
        "health",
        "hr",
        "identity",
        "iot",
        "marketing",
        "media",
        "other",
        "payments",
        "productivity",
        "project-management",
        "scheduling",
        "social",
        "storage",
        "support",
        "video",
    }
)

# underscores only for the generic entries named after their kind (``api_key``, ``oauth1`` ...)
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
SLUG_PATTERN = r"[a-z0-9][a-z0-9-]*"
SETTING_NAME_PATTERN = r"[a-z][a-z0-9_]{0,31}"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: Characters every setting value is limited to, whatever its own pattern says.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Values tried, in order, to check that a templated URL resolves to a plausible https URL.
SAMPLE_VALUES: tuple[str, ...] = (
    "sample",
    "sample.example.com",
    "us-east-1",
    "us-east-1_Sample123",
    "na1",
    "1234567",
    "v1.0",
)

#: Spec fields that hold URLs and may contain ``{setting}`` placeholders.
TEMPLATED_FIELDS: tuple[str, ...] = (
    "issuer",
    "authorization_url",
    "token_url",
    "revocation_url",
    "userinfo_url",
    "jwks_uri",
    "api_base_url",
    "request_token_url",
    "access_token_url",
)


def plausible_host(host: str | None) -> bool:
    """A public DNS name: at least two labels, an alphabetic TLD, no IP literal, no localhost."""
    if not host:
        return False
    host = host.lower()
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return False
    labels = host.split(".")
    if len(labels) < 2 or host == "localhost" or host.endswith(".localhost"):
        return False
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    tld = labels[-1]
    return tld.isalpha() and len(tld) >= 2 and tld not in {"local", "internal", "test"}


def _check_https(url: str, *, fragment: bool = False) -> str:
    """Raise ``ValueError`` unless ``url`` is an absolute https URL with a public-looking host."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError(f"{url!r} is not an https URL")
    if "@" in parts.netloc or parts.port is not None:
        raise ValueError(f"{url!r} must not carry user info or a port")
    if not plausible_host(parts.hostname):
        raise ValueError(f"{url!r} has no plausible public host")
    if parts.fragment and not fragment:
        raise ValueError(f"{url!r} must not have a fragment")
    return url


def _https_url(value: str) -> str:
    if _PLACEHOLDER.search(value):
        raise ValueError(f"{value!r}: placeholders are not allowed here")
    return _check_https(value, fragment=True)


HttpsUrl = Annotated[str, AfterValidator(_https_url)]
Slug = Annotated[str, Field(pattern=rf"^{SLUG_PATTERN}$", max_length=80)]


def placeholders(template: str) -> list[str]:
    """The ``{name}`` placeholders of a URL template, in order."""
    return _PLACEHOLDER.findall(template)


def fill(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{name}`` placeholders (no format-spec mini-language, no attribute access)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Model):
    """A documentation link for a fact."""

    url: HttpsUrl


class Quirk(_Model):
    """A known deviation of the provider from the plain RFC flow, with its documentation."""

    id: Slug
    description: str = Field(min_length=1)
    source: HttpsUrl
    hook: str | None = None


class Setting(_Model):
    """A template variable an integration must (no default) or may supply."""

    name: str = Field(pattern=rf"^{SETTING_NAME_PATTERN}$")
    description: str = Field(min_length=1)
    pattern: str
    default: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _default_matches(self) -> Setting:
        if self.default is not None and not self.accepts(self.default):
            raise ValueError(f"default {self.default!r} does not match pattern {self.pattern!r}")
        return self

    def accepts(self, value: str) -> bool:
        """True when ``value`` fully matches the pattern and is URL-safe.

        Whatever the pattern, a value is only ``[A-Za-z0-9._-]`` and never starts or ends with a
        dot or holds ``..``: it cannot add a path, query, port or user info, nor walk up a path.
        """
        return (
            bool(_SAFE_VALUE.fullmatch(value))
            and ".." not in value
            and not value.startswith(".")
            and not value.endswith(".")
            and bool(re.fullmatch(self.pattern, value))
        )

    @property
    def required(self) -> bool:
        return self.default is None

    def sample(self) -> str:
        """A value this setting accepts: its default, else the first fitting ``SAMPLE_VALUES``."""
        if self.default is not None:
            return self.default
        for candidate in SAMPLE_VALUES:
            if self.accepts(candidate):
                return candidate
        raise ValueError(
            f"setting {self.name!r}: no sample value fits {self.pattern!r}; give it a default"
        )


class RefreshSpec(_Model):
    """How the provider's refresh tokens behave.

    ``access_tokens_expire=False`` means: when the token response carries no ``expires_in``
    (and ``default_access_token_lifetime`` is None), treat the access token as non-expiring.
    """

    supported: bool = True
    rotation: Literal["never", "always", "optional"] = "never"
    #: seconds a refresh token lives, counted from ``lifetime_from``
    refresh_token_lifetime: int | None = Field(default=None, gt=0)
    #: ``issue``: each refresh token lives ``refresh_token_lifetime`` from its own issue, so a
    #: rotating refresh pushes the end back; ``consent``: counted from the user's authorization,
    #: no refresh extends it (the user must reconnect)
    lifetime_from: Literal["issue", "consent"] = "issue"
    #: the token-response member carrying the refresh token's lifetime in seconds, where a
    #: provider names it other than ``refresh_token_expires_in`` (read besides that one)
    refresh_token_expires_in_field: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_]{1,64}$"
    )
    idle_expiry: int | None = Field(default=None, gt=0)
    default_access_token_lifetime: int | None = Field(default=None, gt=0)
    access_tokens_expire: bool = True


class ProviderEventsSpec(_Model):
    """How the provider tells of revoked access (``POST /provider-events/...``)."""

    scheme: Literal["slack", "github", "set"]
    #: ``set`` only: the issuer its Security Event Tokens carry, where it differs from the
    #: OpenID issuer (Google's RISC tokens end the issuer with a slash)
    issuer: HttpsUrl | None = None
    #: ``set`` only: where its signing keys are, where not the OpenID JWKS
    jwks_uri: HttpsUrl | None = None
    source: HttpsUrl


class AccountIdSpec(_Model):
    """Where the provider's account id comes from (a dotted path into that document)."""

    source: Literal["id_token", "token_response", "userinfo", "none"] = "id_token"
    field: str = Field(default="sub", pattern=r"^[A-Za-z0-9_@$-]+(\.[A-Za-z0-9_@$-]+)*$")


#: placeholders a stamp template of each kind may use (besides declared credential fields)
_STAMP_VALUES: dict[str, frozenset[str]] = {
    "oauth2": frozenset({"access_token"}),
    "oidc": frozenset({"access_token"}),
    "mcp": frozenset({"access_token"}),
    "client_credentials": frozenset({"access_token"}),
    "jwt_bearer": frozenset({"access_token"}),
    "github_app": frozenset({"access_token"}),
    "api_key": frozenset({"api_key"}),
    "basic": frozenset({"username", "password"}),
    "oauth1": frozenset(),
}


class StampSpec(_Model):
    """How the proxy puts a grant's credential on API calls (CONTRACT "Credential kinds").

    ``in``: ``header`` (``name`` = ``template`` rendered), ``query`` (parameter ``name``) or
    ``basic`` (``Authorization: Basic base64(template)``, template default
    ``{username}:{password}``). ``template`` holds ``{field}`` placeholders: ``access_token``
    for token kinds, the credential fields for ``api_key`` and ``basic``. Without a template
    the kind's default applies (``Bearer {access_token}``, ``Bearer {api_key}`` for the
    ``Authorization`` header, else the bare value).

    The v1 spelling (``location``, ``format``) is still read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    in_: Literal["header", "query", "basic"] = Field(default="header", alias="in")
    name: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    template: str | None = Field(default=None, max_length=500)

    @model_validator(mode="before")
    @classmethod
    def _v1_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("location" in data or "format" in data):
            data = dict(data)
            if "location" in data:
                data["in"] = data.pop("location")
            if "format" in data:
                data["template"] = data.pop("format")
        return data

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = placeholders(value)
        if not names:
            raise ValueError("template must contain at least one {field} placeholder")
        for n in names:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", n):
                raise ValueError(f"template placeholder {{{n}}} is not a field name")
        return value

    @property
    def location(self) -> str:
        return self.in_

    def template_for(self, auth_mode: str) -> str:
        if self.template is not None:
            return self.template
        if auth_mode == "basic" or self.in_ == "basic":
            return "{api_key}:" if auth_mode == "api_key" else "{username}:{password}"
        value = "{api_key}" if auth_mode == "api_key" else "{access_token}"
        if self.in_ == "header" and self.name.lower() == "authorization":
            return f"Bearer {value}"
        return value

    def render(self, values: str | Mapping[str, str], auth_mode: str = "oauth2") -> str:
        """The stamped value (before base64 for ``basic``); a string means an access token."""
        if isinstance(values, str):
            values = {"access_token": values}
        return fill(self.template_for(auth_mode), values)


def stamp_problem(mode: str, fields: Sequence[CredentialField], stamp: StampSpec) -> str | None:
    """Why ``stamp`` cannot work for a grant of ``mode`` with ``fields`` (None: it can)."""
    allowed = set(_STAMP_VALUES.get(mode, ())) | {f.name for f in fields}
    if stamp.template is not None:
        unknown = [p for p in placeholders(stamp.template) if p not in allowed]
        if unknown:
            return f"template: unknown placeholders {unknown}; allowed: {sorted(allowed)}"
    if stamp.in_ == "basic" and mode not in {"api_key", "basic"}:
        return "in = 'basic' applies to api_key and basic grants only"
    return None


class CredentialField(_Model):
    """One value a grant of this entry needs (the Connect form and ``credentials`` in the API)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    label: str = Field(min_length=1, max_length=100)
    secret: bool = True
    #: a regular expression the whole value must match
    pattern: str | None = None
    required: bool = True
    description: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    def accepts(self, value: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


#: the credential fields of a kind when the entry declares none
DEFAULT_FIELDS: dict[str, tuple[CredentialField, ...]] = {
    "api_key": (CredentialField(name="api_key", label="API key"),),
    "basic": (
        CredentialField(name="username", label="Username", secret=False),
        CredentialField(name="password", label="Password"),
    ),
    "client_credentials": (
        CredentialField(name="client_id", label="Client ID", secret=False, required=False),
        CredentialField(name="client_secret", label="Client secret", required=False),
    ),
    "jwt_bearer": (
        CredentialField(name="private_key", label="Private key (PEM)", required=False),
        CredentialField(name="issuer", label="Issuer", secret=False, required=False),
        CredentialField(name="key_id", label="Key ID", secret=False, required=False),
        CredentialField(name="subject", label="Subject", secret=False, required=False),
    ),
    "oauth1": (
        CredentialField(name="oauth_token", label="Access token", secret=False),
        CredentialField(name="oauth_token_secret", label="Access token secret"),
    ),
    "github_app": (
        CredentialField(
            name="installation_id", label="Installation ID", secret=False, pattern=r"[0-9]{1,20}"
        ),
    ),
}


#: claims the vault sets itself on a ``jwt_bearer`` assertion; an entry cannot replace them
RESERVED_CLAIMS: frozenset[str] = frozenset({"iss", "sub", "aud", "iat", "exp", "jti", "scope"})


class AssertionSpec(_Model):
    """How a ``jwt_bearer`` provider wants its assertion (RFC 7523 3), where it differs from
    the plain defaults (``aud`` = the token URL, ``exp`` one hour after ``iat``, no other
    claims): Salesforce names its login host as audience, DocuSign a bare host name, Box wants
    ``box_sub_type`` and an ``exp`` at most 60 seconds ahead.
    """

    #: the ``aud`` claim; may hold ``{setting}`` placeholders, need not be a URL
    audience: str | None = Field(default=None, min_length=1, max_length=500)
    #: seconds from ``iat`` to ``exp``
    lifetime: int | None = Field(default=None, ge=30, le=3600)
    #: fixed claims added to every assertion
    claims: dict[str, str] = Field(default_factory=dict)

    @field_validator("claims")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(set(value) & RESERVED_CLAIMS)
        if clash:
            raise ValueError(f"claims {clash} are set by the vault and cannot be fixed here")
        for name in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
                raise ValueError(f"invalid claim name {name!r}")
        return value


class VerifyRequest(_Model):
    """A cheap authenticated request that proves a credential (a path under the API base URL)."""

    method: Literal["GET", "HEAD", "POST"] = "GET"
    path: str = Field(
        pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%{}-]*(\?[A-Za-z0-9._~!$&'()*+,;=:@/%?{}-]*)?$"
    )
    expect_status: int = Field(default=200, ge=200, le=299)


@dataclass(frozen=True, slots=True)
class ResolvedEndpoints:
    """A provider's URLs with every ``{setting}`` placeholder filled."""

    authorization_url: str | None
    token_url: str | None
    revocation_url: str | None
    userinfo_url: str | None
    jwks_uri: str | None
    issuer: str | None
    api_base_url: str | None
    request_token_url: str | None = None
    access_token_url: str | None = None


class ProviderSpec(_Model):
    """One catalog entry. See ``docs/providers.md`` for the catalog and ``CONTRACT.md``."""

    name: str = Field(pattern=rf"^{NAME_PATTERN}$")
    display_name: str = Field(min_length=1)
    auth_mode: AuthMode = "oauth2"
    categories: tuple[str, ...] = Field(min_length=1)
    docs_url: HttpsUrl
    issuer: str | None = None
    discovery: bool = False
    authorization_url: str | None = None
    token_url: str | None = None
    revocation_url: str | None = None
    userinfo_url: str | None = None
    jwks_uri: str | None = None
    token_endpoint_auth_method: TokenAuthMethod = "client_secret_basic"
    pkce: bool = True
    default_scopes: tuple[str, ...] = ()
    scope_separator: str = " "
    offline_scope: str | None = None
    #: Plain-language descriptions of scopes, shown on the Connect page. Every default scope
    #: and the offline scope must be described; other scopes may be.
    scope_descriptions: dict[str, str] = Field(default_factory=dict)
    #: The entry this one is a preset of (same endpoints, other default scopes or name).
    alias_of: str | None = Field(default=None, pattern=rf"^{NAME_PATTERN}$")
    authorization_params: dict[str, str] = Field(default_factory=dict)
    consent_params: dict[str, str] = Field(default_factory=dict)
    token_params: dict[str, str] = Field(default_factory=dict)
    refresh: RefreshSpec = RefreshSpec()
    account_id: AccountIdSpec = AccountIdSpec()
    api_base_url: str | None = None
    #: ``mcp`` entries: the vendor's published remote MCP server endpoint
    mcp_server_url: HttpsUrl | None = None
    stamp: StampSpec = StampSpec()
    provider_events: ProviderEventsSpec | None = None
    #: the values a grant of a non-code kind needs; empty: the kind's defaults
    credential_fields: tuple[CredentialField, ...] = ()
    verify_request: VerifyRequest | None = None
    #: ``jwt_bearer`` entries: the assertion's audience, lifetime and fixed claims
    assertion: AssertionSpec | None = None
    #: OAuth 1.0a (RFC 5849) temporary-credential and token endpoints
    request_token_url: str | None = None
    access_token_url: str | None = None
    settings: tuple[Setting, ...] = ()
    hooks: dict[str, str] = Field(default_factory=dict)
    quirks: tuple[Quirk, ...] = ()
    sources: tuple[HttpsUrl, ...] = ()

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {unknown}; allowed: {sorted(CATEGORIES)}")
        if len(set(value)) != len(value):
            raise ValueError("duplicate categories")
        return value

    @field_validator("scope_separator")
    @classmethod
    def _separator(cls, value: str) -> str:
        if value not in {" ", ",", "+"}:
            raise ValueError("scope_separator must be ' ', ',' or '+'")
        return value

    @field_validator("default_scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            if not scope or any(ch.isspace() for ch in scope):
                raise ValueError(f"invalid scope {scope!r}")
        return value

    @field_validator("scope_descriptions")
    @classmethod
    def _scope_descriptions(cls, value: dict[str, str]) -> dict[str, str]:
        for scope, text in value.items():
            if not scope or any(ch.isspace() for ch in scope):
                raise ValueError(f"invalid scope {scope!r}")
            if not text.strip() or "\n" in text:
                raise ValueError(f"scope {scope!r}: the description must be one non-empty line")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProviderSpec:
        setting_names = [s.name for s in self.settings]
        if len(set(setting_names)) != len(setting_names):
            raise ValueError("duplicate setting names")
        declared = set(setting_names)
        samples = {s.name: s.sample() for s in self.settings}
        for field_name in TEMPLATED_FIELDS:
            template = getattr(self, field_name)
            if template is None:
                continue
            used = placeholders(template)
            missing = [p for p in used if p not in declared]
            if missing:
                raise ValueError(f"{field_name}: placeholders {missing} are not declared settings")
            try:
                _check_https(fill(template, samples))
            except ValueError as exc:
                raise ValueError(f"{field_name}: {exc}") from None
        if self.offline_scope is not None and (
            not self.offline_scope or any(ch.isspace() for ch in self.offline_scope)
        ):
            raise ValueError("offline_scope must be a single scope")
        if self.auth_mode in {"oauth2", "oidc"} and self.name not in {"oauth2", "oidc"}:
            if self.authorization_url is None or self.token_url is None:
                if not (self.discovery and self.issuer):
                    raise ValueError("authorization_url and token_url are required")
        if self.assertion is not None:
            if self.auth_mode != "jwt_bearer":
                raise ValueError("assertion requires auth_mode 'jwt_bearer'")
            if self.assertion.audience is not None:
                missing = [p for p in placeholders(self.assertion.audience) if p not in declared]
                if missing:
                    raise ValueError(
                        f"assertion.audience: placeholders {missing} are not declared settings"
                    )
        if self.mcp_server_url is not None and self.auth_mode != "mcp":
            raise ValueError("mcp_server_url requires auth_mode 'mcp'")
        self._check_kind()
        if self.discovery and self.auth_mode != "oidc":
            raise ValueError("discovery requires auth_mode 'oidc'")
        quirk_ids = [q.id for q in self.quirks]
        if len(set(quirk_ids)) != len(quirk_ids):
            raise ValueError("duplicate quirk ids")
        undescribed = [s for s in self.requested_scopes() if s not in self.scope_descriptions]
        if undescribed:
            raise ValueError(f"scope_descriptions: scopes {undescribed} are not described")
        if self.alias_of == self.name:
            raise ValueError("alias_of: an entry cannot be an alias of itself")
        self._check_hooks()
        return self

    def _check_kind(self) -> None:
        mode = self.auth_mode
        generic = self.name in GENERIC_NAMES
        if self.is_generic and self.name != mode:
            raise ValueError(f"the generic entry {self.name!r} must have auth_mode {self.name!r}")
        if not generic:
            if mode in {"client_credentials", "jwt_bearer"} and self.token_url is None:
                raise ValueError(f"auth_mode {mode!r} needs token_url")
            if mode == "oauth1" and not (
                self.request_token_url and self.authorization_url and self.access_token_url
            ):
                raise ValueError(
                    "auth_mode 'oauth1' needs request_token_url, authorization_url and "
                    "access_token_url"
                )
        names = [f.name for f in self.credential_fields]
        if len(set(names)) != len(names):
            raise ValueError("duplicate credential_fields names")
        if self.credential_fields and mode in CODE_MODES:
            raise ValueError(f"credential_fields do not apply to auth_mode {mode!r}")
        if mode == "api_key" and self.credential_fields and "api_key" not in names:
            raise ValueError("an api_key entry's credential_fields must include 'api_key'")
        problem = stamp_problem(mode, self.fields(), self.stamp)
        if problem:
            raise ValueError(f"stamp: {problem}")

    def fields(self) -> tuple[CredentialField, ...]:
        """The credential fields of this entry (declared, else the kind's defaults)."""
        return self.credential_fields or DEFAULT_FIELDS.get(self.auth_mode, ())

    def _check_hooks(self) -> None:
        from grantkeeper.providers import quirks  # local: quirks imports nothing from here

        for point, hook_name in self.hooks.items():
            if point not in quirks.HOOK_POINTS:
                raise ValueError(f"hooks: unknown hook point {point!r}")
            if not quirks.is_registered(point, hook_name):
                raise ValueError(f"hooks.{point}: no hook named {hook_name!r} is registered")
        wired = set(self.hooks.values())
        for quirk in self.quirks:
            if quirk.hook is not None and quirk.hook not in wired:
                raise ValueError(
                    f"quirk {quirk.id!r} names hook {quirk.hook!r}, which is not in hooks"
                )

    # -- behaviour ---------------------------------------------------------------------------

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)

    def resolve_settings(self, settings: Mapping[str, str]) -> dict[str, str]:
        """Validate ``settings`` against the declared ones and fill defaults.

        Unknown keys are ignored (an integration may carry settings for other purposes).
        """
        values: dict[str, str] = {}
        for spec in self.settings:
            value = settings.get(spec.name, spec.default)
            if value is None:
                raise InvalidProviderSettings(
                    f"provider {self.name!r}: setting {spec.name!r} is required "
                    f"({spec.description})",
                    setting=spec.name,
                )
            if not isinstance(value, str) or not spec.accepts(value):
                raise InvalidProviderSettings(
                    f"provider {self.name!r}: setting {spec.name!r} does not match "
                    f"{spec.pattern!r}",
                    setting=spec.name,
                )
            values[spec.name] = value
        return values

    def resolve(self, settings: Mapping[str, str] | None = None) -> ResolvedEndpoints:
        """Fill every templated URL from ``settings`` (validated; defaults applied)."""
        values = self.resolve_settings(settings or {})

        def one(template: str | None) -> str | None:
            return None if template is None else fill(template, values)

        return ResolvedEndpoints(
            authorization_url=one(self.authorization_url),
            token_url=one(self.token_url),
            revocation_url=one(self.revocation_url),
            userinfo_url=one(self.userinfo_url),
            jwks_uri=one(self.jwks_uri),
            issuer=one(self.issuer),
            api_base_url=one(self.api_base_url),
            request_token_url=one(self.request_token_url),
            access_token_url=one(self.access_token_url),
        )

    def assertion_audience(self, settings: Mapping[str, str] | None = None) -> str | None:
        """The entry's ``aud`` for a ``jwt_bearer`` assertion, filled from ``settings``."""
        if self.assertion is None or self.assertion.audience is None:
            return None
        return fill(self.assertion.audience, self.resolve_settings(settings or {}))

    def requested_scopes(self) -> list[str]:
        """The default scopes plus the offline scope: what a Connect page shows by default."""
        scopes = list(self.default_scopes)
        if self.offline_scope:
            scopes.append(self.offline_scope)
        return list(dict.fromkeys(scopes))

    def describe_scope(self, scope: str) -> str | None:
        """The plain-language description of ``scope``, if the entry has one."""
        return self.scope_descriptions.get(scope)

    def scope_string(self, scopes: Sequence[str], *, offline: bool) -> str:
        """The ``scope`` parameter: ``scopes`` (or the defaults) plus ``offline_scope``."""
        wanted = list(scopes) if scopes else list(self.default_scopes)
        if offline and self.offline_scope:
            wanted.append(self.offline_scope)
        return self.scope_separator.join(dict.fromkeys(s for s in wanted if s))

    def authorization_extra_params(self, *, consent: bool) -> dict[str, str]:
        """Extra authorization-request parameters; ``consent`` when no refresh token works."""
        params = dict(self.authorization_params)
        if consent:
            params.update(self.consent_params)
        return params

    @property
    def is_generic(self) -> bool:
        """True for the entries configured wholly by the integration (one per kind)."""
        return self.name in GENERIC_NAMES


class Catalog:
    """An immutable, name-indexed set of provider specs."""

    def __init__(self, specs: Sequence[ProviderSpec]) -> None:
        by_name: dict[str, ProviderSpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise CatalogError(f"duplicate provider name {spec.name!r}")
            by_name[spec.name] = spec
        for spec in by_name.values():
            if spec.alias_of is None:
                continue
            target = by_name.get(spec.alias_of)
            if target is None:
                raise CatalogError(f"{spec.name}: alias_of names no entry ({spec.alias_of!r})")
            if target.alias_of is not None:
                raise CatalogError(f"{spec.name}: alias_of names an alias ({spec.alias_of!r})")
            if target.auth_mode != spec.auth_mode:
                raise CatalogError(f"{spec.name}: alias_of names an entry of another auth_mode")
        self._specs = dict(sorted(by_name.items()))

    def get(self, name: str) -> ProviderSpec:
        try:
            return self._specs[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._specs, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownProvider(f"unknown provider {name!r}{hint}", provider=name) from None

    def all(self) -> list[ProviderSpec]:
        return list(self._specs.values())

    def search(
        self, q: str | None = None, category: str | None = None, auth_mode: str | None = None
    ) -> list[ProviderSpec]:
        """Entries whose name or display name contains ``q`` (case-insensitive), in ``category``,
        of ``auth_mode``."""
        needle = (q or "").strip().casefold()
        return [
            spec
            for spec in self._specs.values()
            if (category is None or category in spec.categories)
            and (auth_mode is None or spec.auth_mode == auth_mode)
            and (
                not needle
                or needle in spec.name.casefold()
                or needle in spec.display_name.casefold()
            )
        ]

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[ProviderSpec]:
        return iter(self._specs.values())


def _format_validation_error(path: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "<entry>"
        problems.append(f"{loc}: {err['msg']}")
    return f"{path}: " + "; ".join(problems)


def parse_spec(text: str, *, stem: str, path: str) -> ProviderSpec:
    """Parse one TOML entry; errors name the file and the field."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}", file=path) from None
    try:
        spec = ProviderSpec.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_format_validation_error(path, exc), file=path) from None
    if spec.name != stem:
        raise CatalogError(f"{path}: name: {spec.name!r} differs from the file name", file=path)
    return spec


def load_catalog_from(directory: Path) -> Catalog:
    """Load every ``*.toml`` entry of ``directory`` (used by tests and tools)."""
    specs = [
        parse_spec(p.read_text(encoding="utf-8"), stem=p.stem, path=str(p))
        for p in sorted(directory.glob("*.toml"))
    ]
    return Catalog(specs)


@cache
def load_catalog() -> Catalog:
    """The built-in catalog (``grantkeeper/providers/specs/*.toml``), read once and cached."""
    root = resources.files("grantkeeper.providers").joinpath("specs")
    specs = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        stem = entry.name.removesuffix(".toml")
        specs.append(
            parse_spec(entry.read_text(encoding="utf-8"), stem=stem, path=f"specs/{entry.name}")
        )
    return Catalog(specs)
