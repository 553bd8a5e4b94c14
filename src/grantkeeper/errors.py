"""The one error tree of grantkeeper.

Every error carries a stable, machine-readable ``code`` (snake_case) and an
HTTP ``status`` hint; ``api/errors.py`` is the only place that turns them into
``application/problem+json``. Details never contain a secret.

Our exception hierarchy::

    GrantkeeperError
    + ConfigError                       config_error
    + VaultError
    | - VaultSealed                     vault_sealed
    | - DecryptionFailed                keys_unavailable    (the single opaque failure, 503)
    |   - UnknownKeyId                  keys_unavailable
    | - KeysUnavailable                 keys_unavailable    (a root key disabled/destroyed/down)
    |   - RootKeyUnavailable            keys_unavailable    (names the root key and backend)
    + CatalogError                      catalog_error
    | - UnknownProvider                 unknown_provider
    | - InvalidProviderSettings         invalid_provider_settings
    + AuthError
    | - Unauthenticated                 unauthenticated
    | - Forbidden                       forbidden
    | - InvalidSubjectToken             invalid_subject_token (an end user's JWT or token)
    + NotFound                          not_found
    + Conflict                          conflict
    | - IntegrationInUse                integration_in_use
    | - GrantInvalid                    grant_invalid
    | - GrantRevoked                    grant_revoked
    | - ProxyNotConfigured              proxy_not_configured
    | - AlreadyExists                   already_exists
    | - NoAccessToken                   no_access_token (api_key, basic, oauth1 grants)
    + InvalidInput                      invalid_input
    | - ReturnToNotAllowed              return_to_not_allowed
    | - UnsafeUrl                       unsafe_url
    | - MalformedJson                   malformed_json (400)
    | - UnsupportedMediaType            unsupported_media_type (415)
    | - InvalidProxyPath                invalid_proxy_path (400)
    | - BadRequest                      bad_request (400: malformed HTTP framing)
    | - RequestTooLarge                 payload_too_large (413)
    | - McpDiscoveryFailed              mcp_discovery_failed
    | - ClientRegistrationUnavailable   client_registration_unavailable
    + TokenExportDisabled               token_export_disabled
    + TokensAlreadyRetrieved            tokens_already_retrieved
    + ConnectError                      (the OAuth callback; rendered as HTML)
    | - InvalidState                    invalid_state
    | - IssuerMismatch                  issuer_mismatch
    | - InvalidIdToken                  invalid_id_token
    | - CodeExchangeFailed              code_exchange_failed
    + ProviderError
    | - ProviderUnavailable             provider_unavailable  (transient: 5xx, 429, timeout)
    | | - ProviderOutcomeUnknown        provider_unavailable  (a 2xx that could not be read)
    | - RefreshTokenRejected            refresh_token_rejected (invalid_grant on import)
    | - CredentialsRejected             credentials_rejected (422: verification refused)
    | - ProviderRejected                provider_rejected
    | - UpstreamTimeout                 upstream_timeout (504: the proxied call took too long)
    | - UpstreamResponseTooLarge        upstream_response_too_large (502)
    | - IntegrationMisconfigured        integration_misconfigured (424: invalid_client,
    |                                   unauthorized_client; the grant stays active)
    + RefreshBusy                       refresh_busy (lock/lease wait timed out: transient)
    + StoreUnavailable                  store_unavailable (a write kept failing: transient)
    + RateLimited                       rate_limited
    + SignalRejected                    provider_event_unverified (401: a provider notification
    | |                                   that does not verify; nothing changes)
    | - SignalMalformed                 provider_event_malformed (400)
    + TokenExchangeError                (RFC 6749 5.2 JSON: ``error`` is the OAuth code)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "SignalMalformed",
    "SignalRejected",
    "AlreadyExists",
    "ClientRegistrationUnavailable",
    "AuthError",
    "BadRequest",
    "CatalogError",
    "CodeExchangeFailed",
    "CredentialsRejected",
    "ConfigError",
    "Conflict",
    "ConnectError",
    "DecryptionFailed",
    "Forbidden",
    "StoreUnavailable",
    "GrantInvalid",
    "GrantRevoked",
    "GrantkeeperError",
    "IntegrationInUse",
    "IntegrationMisconfigured",
    "InvalidIdToken",
    "InvalidInput",
    "InvalidProviderSettings",
    "InvalidProxyPath",
    "InvalidState",
    "KeysUnavailable",
    "RootKeyUnavailable",
    "InvalidSubjectToken",
    "IssuerMismatch",
    "MalformedJson",
    "McpDiscoveryFailed",
    "NoAccessToken",
    "NotFound",
    "UnsupportedMediaType",
    "ProviderError",
    "ProviderOutcomeUnknown",
    "ProviderRejected",
    "ProviderUnavailable",
    "ProxyNotConfigured",
    "RateLimited",
    "RefreshBusy",
    "RefreshTokenRejected",
    "RequestTooLarge",
    "ReturnToNotAllowed",
    "TokenExchangeError",
    "TokenExportDisabled",
    "TokensAlreadyRetrieved",
    "Unauthenticated",
    "UnknownKeyId",
    "UnknownProvider",
    "UnsafeUrl",
    "UpstreamResponseTooLarge",
    "UpstreamTimeout",
    "VaultError",
    "VaultSealed",
]


class GrantkeeperError(Exception):
    """Base of every error grantkeeper raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        #: extra problem members (must never hold a secret)
        self.extra = extra
        super().__init__(self.detail)


class ConfigError(GrantkeeperError):
    code = "config_error"
    title = "Invalid configuration"


class VaultError(GrantkeeperError):
    code = "vault_error"
    status = 503
    title = "Vault error"


class VaultSealed(VaultError):
    code = "vault_sealed"
    title = "No key-encryption key is loaded"


class DecryptionFailed(VaultError):
    """A ciphertext did not open: tampered, moved, truncated or wrong key.

    Deliberately opaque (like Fernet's ``InvalidToken``): the reason is not
    told, so it gives an attacker nothing to probe. A request that meets one
    answers 503 ``keys_unavailable`` (the contract: never a 500): for the caller
    it means "this secret cannot be used now".
    """

    code = "keys_unavailable"
    status = 503
    title = "Stored secret could not be decrypted"


class UnknownKeyId(DecryptionFailed):
    """The key that sealed the value is not loaded: an operator problem, not tampering."""

    title = "Stored secret is sealed with a key that is not loaded"


class KeysUnavailable(VaultError):
    """The keys of an environment cannot be used now: its root key is disabled,
    destroyed or unreachable (only that environment is affected)."""

    code = "keys_unavailable"
    title = "Keys unavailable"


class RootKeyUnavailable(KeysUnavailable):
    """A root key (local, AWS KMS, PKCS#11) refused or did not answer.

    ``root_id`` and ``backend`` name it; ``reason`` is ``unreachable``, ``denied``
    (disabled, destroyed, no permission) or ``wrong_key`` (it answers but does not
    open what it is asked to).
    """

    def __init__(self, root_id: str, backend: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.root_id = root_id
        self.backend = backend
        self.reason = reason


class CatalogError(GrantkeeperError):
    code = "catalog_error"
    title = "Provider catalog error"


class UnknownProvider(CatalogError):
    code = "unknown_provider"
    status = 404
    title = "Unknown provider"


class InvalidProviderSettings(CatalogError):
    code = "invalid_provider_settings"
    status = 422
    title = "Invalid provider settings"


class AuthError(GrantkeeperError):
    status = 401


class Unauthenticated(AuthError):
    code = "unauthenticated"
    status = 401
    title = "Missing or invalid API key"


class Forbidden(AuthError):
    code = "forbidden"
    status = 403
    title = "The API key lacks the required scope"


class InvalidSubjectToken(AuthError):
    """An end user's bearer (a trusted issuer's JWT or an end-user token) did not verify.

    One opaque error for every reason (bad signature, expired, unknown issuer, revoked):
    the reason is logged at debug level, never told.
    """

    code = "invalid_subject_token"
    status = 401
    title = "Missing, invalid, expired or untrusted end-user token"


class NotFound(GrantkeeperError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(GrantkeeperError):
    code = "conflict"
    status = 409
    title = "Conflict"


class AlreadyExists(Conflict):
    code = "already_exists"
    title = "Already exists"


class IntegrationInUse(Conflict):
    code = "integration_in_use"
    title = "The integration still has grants"


class GrantInvalid(Conflict):
    code = "grant_invalid"
    title = "The grant is no longer valid; the user must reconnect"


class GrantRevoked(Conflict):
    code = "grant_revoked"
    title = "The grant was revoked"


class NoAccessToken(Conflict):
    """The grant's kind has no access token (api_key, basic, oauth1): use ``/credentials``."""

    code = "no_access_token"
    title = "This kind of grant has no access token; use /credentials"


class ProxyNotConfigured(Conflict):
    code = "proxy_not_configured"
    title = "The integration has no API base URL to proxy to"


class InvalidInput(GrantkeeperError):
    code = "invalid_input"
    status = 422
    title = "Invalid input"


class ReturnToNotAllowed(InvalidInput):
    code = "return_to_not_allowed"
    title = "return_to is not in the integration's return_urls"


class UnsafeUrl(InvalidInput):
    code = "unsafe_url"
    title = "URL not allowed"


class MalformedJson(InvalidInput):
    code = "malformed_json"
    status = 400
    title = "Malformed JSON body"


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"
    status = 415
    title = "Send application/json"


class InvalidProxyPath(InvalidInput):
    """The proxy path could leave the API base URL (traversal, another host, bad bytes)."""

    code = "invalid_proxy_path"
    status = 400
    title = "The proxy path is not allowed"


class BadRequest(InvalidInput):
    """Malformed HTTP framing, e.g. both Content-Length and Transfer-Encoding."""

    code = "bad_request"
    status = 400
    title = "Bad request"


class RequestTooLarge(InvalidInput):
    code = "payload_too_large"
    status = 413
    title = "Request body too large"


class McpDiscoveryFailed(InvalidInput):
    """An MCP server's protected resource or authorization server metadata is unusable."""

    code = "mcp_discovery_failed"
    title = "The MCP server's authorization could not be discovered"


class ClientRegistrationUnavailable(InvalidInput):
    """No client_id was given and the authorization server offers no way to register."""

    code = "client_registration_unavailable"
    title = "The authorization server offers no client registration"


class TokenExportDisabled(GrantkeeperError):
    code = "token_export_disabled"
    status = 403
    title = "Token export is disabled for this integration"


class TokensAlreadyRetrieved(GrantkeeperError):
    code = "tokens_already_retrieved"
    status = 410
    title = "The tokens were already retrieved or have expired"


class ConnectError(GrantkeeperError):
    """Failures of the browser-facing OAuth callback (rendered as an HTML page)."""

    code = "connect_error"
    status = 400
    title = "The authorization could not be completed"


class InvalidState(ConnectError):
    code = "invalid_state"
    title = "Unknown, expired or already used authorization request"


class IssuerMismatch(ConnectError):
    code = "issuer_mismatch"
    title = "The authorization response came from an unexpected issuer"


class InvalidIdToken(ConnectError):
    code = "invalid_id_token"
    title = "The provider's ID token failed validation"


class CodeExchangeFailed(ConnectError):
    code = "code_exchange_failed"
    title = "The provider refused the authorization code"


class ProviderError(GrantkeeperError):
    code = "provider_error"
    status = 502
    title = "Provider error"


class ProviderUnavailable(ProviderError):
    """Transient: 5xx, 429, timeouts and network errors."""

    code = "provider_unavailable"
    status = 503
    title = "The provider is unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = max(1, int(retry_after))


class ProviderOutcomeUnknown(ProviderUnavailable):
    """The provider answered 2xx but the answer could not be read whole or parsed.

    It may have done the work (rotated the refresh token): never a clean failure.
    """


class RefreshTokenRejected(ProviderError):
    code = "refresh_token_rejected"
    status = 422
    title = "The provider rejected the refresh token"


class CredentialsRejected(ProviderError):
    """The provider refused the credentials when the vault proved them before saving."""

    code = "credentials_rejected"
    status = 422
    title = "The provider rejected the credentials"


class ProviderRejected(ProviderError):
    code = "provider_rejected"
    status = 502
    title = "The provider rejected the request"


class UpstreamTimeout(ProviderError):
    code = "upstream_timeout"
    status = 504
    title = "The provider's API did not answer in time"


class UpstreamResponseTooLarge(ProviderError):
    code = "upstream_response_too_large"
    status = 502
    title = "The provider's response exceeds the proxy's size limit"


class IntegrationMisconfigured(ProviderError):
    """The provider refused the integration's own client (``invalid_client``,
    ``unauthorized_client``): the integration's problem, not the grant's."""

    code = "integration_misconfigured"
    status = 424
    title = "The provider refuses the integration's client"

    def __init__(self, detail: str | None = None, *, retry_after: int = 30, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = max(1, int(retry_after))


class RefreshBusy(GrantkeeperError):
    """Waiting for another process's refresh timed out. Transient, never a credential failure."""

    code = "refresh_busy"
    status = 503
    title = "A refresh of this grant is in progress; retry shortly"
    retry_after = 1


class RateLimited(GrantkeeperError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = max(1, int(retry_after))


class StoreUnavailable(GrantkeeperError):
    """The database refused a write after retries; nothing was reported as done."""

    code = "store_unavailable"
    status = 503
    title = "The database is unavailable; retry shortly"
    retry_after = 2


class SignalRejected(GrantkeeperError):
    """A provider's notification that does not verify (signature, issuer, audience, age,
    replay): nothing is changed."""

    code = "provider_event_unverified"
    status = 401
    title = "Provider notification not verified"


class SignalMalformed(SignalRejected):
    code = "provider_event_malformed"
    status = 400
    title = "Malformed provider notification"


class TokenExchangeError(GrantkeeperError):
    """An RFC 8693 token exchange refused: rendered as RFC 6749 section 5.2 JSON, not problem+json.

    ``error`` is the OAuth error code (``invalid_request``, ``invalid_grant``,
    ``invalid_target``, ``invalid_scope``, ``invalid_client``, ...); the description never
    says more than the caller may know (why a subject token failed is not told).
    """

    code = "token_exchange_error"
    status = 400
    title = "Token exchange refused"

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.http_status = status
        self.retry_after = retry_after
