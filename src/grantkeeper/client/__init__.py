"""grantkeeper.client: the Python SDK for the grantkeeper vault API.

```python
from grantkeeper.client import Client

with Client("https://vault.example", api_key) as vault:
    token = vault.token(grant_id, min_ttl=300)
    with httpx.Client(auth=vault.auth(grant_id)) as provider:
        provider.get("https://api.provider.example/me")
```

Self-contained: it depends on ``httpx`` only (``requests`` optionally, for
``Client.requests_auth``) and imports nothing else from ``grantkeeper``.
"""

from ._async_client import AsyncClient
from ._auth import AsyncGrantAuth, GrantAuth
from ._client import Client
from ._exceptions import (
    APIError,
    AuthenticationError,
    ConflictError,
    GoneError,
    GrantInvalidError,
    GrantkeeperClientError,
    GrantRevokedError,
    IntegrationInUseError,
    NotFoundError,
    PermissionDeniedError,
    ProviderUnavailableError,
    RateLimitedError,
    RefreshTokenRejectedError,
    ReturnToNotAllowedError,
    ServerError,
    TokenExportDisabledError,
    TokensAlreadyRetrievedError,
    TransportError,
    UnexpectedResponseError,
    UnsupportedGrantKindError,
    ValidationError,
    error_from_response,
)
from ._models import (
    AccessToken,
    AuditEvent,
    ConnectSession,
    ConnectSessionStatus,
    Credentials,
    ExportedTokens,
    Grant,
    GrantFailure,
    Integration,
    Page,
    Provider,
    Revocation,
    WebhookEndpoint,
)
from ._stamp import Stamp

__all__ = [
    "APIError",
    "AccessToken",
    "AsyncClient",
    "AsyncGrantAuth",
    "AuditEvent",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "ConnectSession",
    "ConnectSessionStatus",
    "Credentials",
    "ExportedTokens",
    "GoneError",
    "Grant",
    "GrantAuth",
    "GrantFailure",
    "GrantInvalidError",
    "GrantRevokedError",
    "GrantkeeperClientError",
    "Integration",
    "IntegrationInUseError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "Provider",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RefreshTokenRejectedError",
    "ReturnToNotAllowedError",
    "Revocation",
    "ServerError",
    "Stamp",
    "TokenExportDisabledError",
    "TokensAlreadyRetrievedError",
    "TransportError",
    "UnexpectedResponseError",
    "UnsupportedGrantKindError",
    "ValidationError",
    "WebhookEndpoint",
    "error_from_response",
]

# Present the public objects as members of this package (as httpx does).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj
