"""The SDK's public surface is pinned: changing it must be deliberate."""

from __future__ import annotations

import subprocess
import sys

import grantkeeper.client as sdk

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert sdk.__all__ == EXPECTED
    assert sdk.__all__ == sorted(sdk.__all__)


def test_exported_members_belong_to_the_package() -> None:
    for name in sdk.__all__:
        member = getattr(sdk, name)
        assert member.__module__ == "grantkeeper.client", name


def test_imports_nothing_else_from_grantkeeper_and_not_requests() -> None:
    code = (
        "import sys, grantkeeper.client\n"
        "bad = [m for m in sys.modules if m.startswith('grantkeeper')"
        " and m != 'grantkeeper' and not m.startswith('grantkeeper.client')]\n"
        "assert not bad, bad\n"
        "assert 'requests' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_docstring_draws_the_exception_tree() -> None:
    from grantkeeper.client import _exceptions

    doc = _exceptions.__doc__ or ""
    for name in [n for n in sdk.__all__ if n.endswith("Error")]:
        assert f" {name} " in doc or doc.rstrip().endswith(name) or f" {name}\n" in doc, name
