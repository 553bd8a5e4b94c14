from __future__ import annotations

from typing import Any

import httpx
import pytest
from sdk_fakes import API_KEY, BASE_URL, NOW, FakeVault, problem

from grantkeeper.client import (
    APIError,
    AuthenticationError,
    Client,
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
    ValidationError,
    error_from_response,
)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (409, "grant_invalid", GrantInvalidError),
        (409, "grant_revoked", GrantRevokedError),
        (409, "integration_in_use", IntegrationInUseError),
        (410, "tokens_already_retrieved", TokensAlreadyRetrievedError),
        (422, "return_to_not_allowed", ReturnToNotAllowedError),
        (422, "refresh_token_rejected", RefreshTokenRejectedError),
        (403, "token_export_disabled", TokenExportDisabledError),
        (429, "rate_limited", RateLimitedError),
        (503, "provider_unavailable", ProviderUnavailableError),
        # Unknown codes fall back by status.
        (400, "bad_request", ValidationError),
        (401, "unauthorized", AuthenticationError),
        (403, "insufficient_scope", PermissionDeniedError),
        (404, "grant_not_found", NotFoundError),
        (409, "something_new", ConflictError),
        (410, "something_gone", GoneError),
        (422, "validation_error", ValidationError),
        (429, "slow_down", RateLimitedError),
        (500, "internal_error", ServerError),
        (502, "bad_gateway", ServerError),
        (418, "teapot", APIError),
    ],
)
def test_error_class_per_code(status: int, code: str, cls: type[APIError]) -> None:
    error = error_from_response(problem(status, code, "details here"))
    assert type(error) is cls
    assert isinstance(error, GrantkeeperClientError)
    assert error.status == status
    assert error.code == code
    assert error.detail == "details here"
    assert error.title
    assert error.type and error.type.endswith(code)
    assert error.body["code"] == code
    assert code in str(error) and str(status) in str(error)


def test_hierarchy() -> None:
    assert issubclass(GrantInvalidError, ConflictError)
    assert issubclass(GrantRevokedError, ConflictError)
    assert issubclass(IntegrationInUseError, ConflictError)
    assert issubclass(TokensAlreadyRetrievedError, GoneError)
    assert issubclass(ReturnToNotAllowedError, ValidationError)
    assert issubclass(RefreshTokenRejectedError, ValidationError)
    for cls in (ConflictError, GoneError, ValidationError, RateLimitedError, ServerError):
        assert issubclass(cls, APIError)
    assert issubclass(APIError, GrantkeeperClientError)
    assert issubclass(TransportError, GrantkeeperClientError)
    assert not issubclass(TransportError, APIError)


def test_non_json_error_falls_back_by_status() -> None:
    error = error_from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert type(error) is ServerError
    assert error.code is None and error.body == {}
    assert str(error) == "502: Bad Gateway"


def test_retry_after_is_parsed() -> None:
    error = error_from_response(problem(429, "rate_limited", headers={"Retry-After": "7"}))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7.0


def test_grant_invalid_exposes_failure(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant(status="invalid")
    with pytest.raises(GrantInvalidError) as info:
        client.grants.token(gid)
    failure = info.value.failure
    assert failure is not None
    assert failure.code == "invalid_grant"
    assert failure.description == "Token expired"
    assert failure.at is not None and failure.at.tzinfo is not None
    assert info.value.status == 409


def test_grant_revoked(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant(status="revoked")
    with pytest.raises(GrantRevokedError):
        client.token(gid)


def test_errors_from_live_calls(client: Client, vault: FakeVault) -> None:
    with pytest.raises(ReturnToNotAllowedError):
        client.connect.create_session("google-mail", "u1", "https://evil.example/")
    session = client.connect.create_session("google-mail", "u1", "https://app.example/done")
    client.connect.export_tokens(session.id)
    with pytest.raises(TokensAlreadyRetrievedError):
        client.connect.export_tokens(session.id)
    with pytest.raises(RefreshTokenRejectedError):
        client.grants.import_("google-mail", "u1", "bad")
    vault.add_grant(integration_id="google-mail")
    with pytest.raises(IntegrationInUseError):
        client.integrations.delete("google-mail")
    with pytest.raises(NotFoundError):
        client.grants.get("does-not-exist")


def test_api_key_never_in_errors_or_reprs(vault: FakeVault, sleeps: Any) -> None:
    with Client(BASE_URL, API_KEY, transport=vault.transport(), sleep=sleeps) as good:
        assert API_KEY not in repr(good)
        assert API_KEY not in str(good)
        assert API_KEY not in repr(good.grants)
        assert "**********" in repr(good)
        gid = vault.add_grant(status="invalid")
        with pytest.raises(GrantInvalidError) as info:
            good.token(gid)
        texts = [str(info.value), repr(info.value), repr(info.value.response)]
        texts.append(repr(info.value.response.request.headers))  # type: ignore[union-attr]
        assert all(API_KEY not in text for text in texts)

    with Client(BASE_URL, "gk_wrong_key", transport=vault.transport()) as bad:
        with pytest.raises(AuthenticationError) as auth_info:
            bad.providers.list()
        assert "gk_wrong_key" not in str(auth_info.value)
        assert "gk_wrong_key" not in repr(auth_info.value)


def test_transport_error_hides_key(vault: FakeVault, sleeps: Any) -> None:
    vault.queued.append(httpx.ConnectError("connection refused"))
    with Client(
        BASE_URL, API_KEY, transport=vault.transport(), max_retries=0, sleep=sleeps
    ) as client:
        with pytest.raises(TransportError) as info:
            client.grants.get("g")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert API_KEY not in str(info.value)
    assert "connection refused" in str(info.value)


def test_unexpected_success_body(client: Client, vault: FakeVault) -> None:
    vault.queued.append(httpx.Response(200, text="not json"))
    with pytest.raises(UnexpectedResponseError):
        client.grants.get("g")
    vault.queued.append(httpx.Response(200, json={"id": "g"}))  # missing members
    with pytest.raises(UnexpectedResponseError):
        client.grants.get("g")


def test_api_key_not_logged(
    vault: FakeVault, sleeps: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    vault.queued.append(problem(503, "provider_unavailable", headers={"Retry-After": "0"}))
    gid = vault.add_grant()
    with Client(BASE_URL, API_KEY, transport=vault.transport(), sleep=sleeps) as client:
        token = client.token(gid)
    assert caplog.records
    assert API_KEY not in caplog.text
    assert token.access_token not in caplog.text


def test_grant_failure_member_tolerates_garbage() -> None:
    error = error_from_response(problem(409, "grant_invalid", failure="oops"))
    assert isinstance(error, GrantInvalidError)
    assert error.failure is None
    error = error_from_response(problem(409, "grant_invalid", failure={"code": "x", "at": NOW}))
    assert isinstance(error, GrantInvalidError)
    assert error.failure is not None and error.failure.code == "x"
