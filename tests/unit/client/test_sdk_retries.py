from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from sdk_fakes import API_KEY, BASE_URL, FakeVault, Sleeps, problem

from grantkeeper.client import (
    Client,
    ConflictError,
    ProviderUnavailableError,
    RateLimitedError,
    ServerError,
    TransportError,
    ValidationError,
)
from grantkeeper.client._models import parse_retry_after
from grantkeeper.client._retry import RetryPolicy


def unavailable(retry_after: str | None = "2") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return problem(503, "provider_unavailable", "provider down", headers=headers)


def test_503_with_retry_after_is_retried(client: Client, vault: FakeVault, sleeps: Sleeps) -> None:
    gid = vault.add_grant()
    vault.queued += [unavailable("2"), unavailable("1")]
    token = client.token(gid)
    assert token.access_token == "at-1"
    assert len(sleeps) == 2
    assert 2.0 <= sleeps[0] <= 2.2 and 1.0 <= sleeps[1] <= 1.1
    assert vault.paths() == [f"POST /v1/grants/{gid}/token"] * 3


def test_retries_exhausted_raise_with_retry_after(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    vault.queued += [unavailable("3")] * 4
    with pytest.raises(ProviderUnavailableError) as info:
        client.token("g")
    assert info.value.retry_after == 3.0
    assert len(sleeps) == 3  # max_retries=3 -> four attempts
    assert len(vault.requests) == 4


def test_max_retries_zero(vault: FakeVault, sleeps: Sleeps) -> None:
    vault.queued.append(unavailable("1"))
    with Client(BASE_URL, API_KEY, transport=vault.transport(), max_retries=0, sleep=sleeps) as c:
        with pytest.raises(ProviderUnavailableError):
            c.token("g")
    assert sleeps == []


def test_retry_after_beyond_cap_is_not_waited_for(vault: FakeVault, sleeps: Sleeps) -> None:
    vault.queued.append(unavailable("3600"))
    with Client(
        BASE_URL, API_KEY, transport=vault.transport(), max_retry_wait=30, sleep=sleeps
    ) as client:
        with pytest.raises(ProviderUnavailableError) as info:
            client.token("g")
    assert sleeps == []
    assert info.value.retry_after == 3600


def test_429_is_retried_even_for_post(client: Client, vault: FakeVault, sleeps: Sleeps) -> None:
    vault.queued.append(problem(429, "rate_limited", headers={"Retry-After": "1"}))
    session = client.connect.create_session("i", "u", "https://app.example/x")
    assert session.id
    assert len(sleeps) == 1 and len(vault.requests) == 2


def test_429_without_retry_after_uses_backoff(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    vault.queued += [problem(429, "rate_limited")] * 4
    with pytest.raises(RateLimitedError):
        client.providers.list()
    assert len(sleeps) == 3
    # full jitter: each wait is within its exponential ceiling
    for attempt, waited in enumerate(sleeps):
        assert 0 <= waited <= min(8.0, 0.25 * 2**attempt)


def test_plain_503_not_retried_for_non_idempotent_post(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    vault.queued.append(problem(503, "maintenance", headers={"Retry-After": "1"}))
    with pytest.raises(ServerError):
        client.connect.create_session("i", "u", "https://app.example/x")
    assert sleeps == [] and len(vault.requests) == 1


def test_plain_503_retried_for_get(client: Client, vault: FakeVault, sleeps: Sleeps) -> None:
    vault.queued.append(httpx.Response(503, text="busy"))
    assert client.providers.list()
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    "response",
    [
        problem(400, "bad_request"),
        problem(409, "grant_invalid"),
        problem(422, "validation_error"),
        problem(500, "internal_error"),
        problem(502, "bad_gateway"),
    ],
)
def test_other_errors_are_not_retried(
    client: Client, vault: FakeVault, sleeps: Sleeps, response: httpx.Response
) -> None:
    vault.queued.append(response)
    with pytest.raises((ValidationError, ConflictError, ServerError)):
        client.token("g")
    assert sleeps == [] and len(vault.requests) == 1


def test_connection_errors_retried_for_idempotent(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    gid = vault.add_grant()
    vault.queued += [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof")]
    assert client.token(gid).access_token  # token endpoint is safe to retry
    assert len(sleeps) == 2


def test_read_errors_not_retried_for_post(client: Client, vault: FakeVault, sleeps: Sleeps) -> None:
    vault.queued.append(httpx.ReadTimeout("slow"))
    with pytest.raises(TransportError):
        client.connect.create_session("i", "u", "https://app.example/x")
    assert sleeps == []


def test_connect_errors_retried_even_for_post(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    vault.queued.append(httpx.ConnectError("refused"))
    assert client.connect.create_session("i", "u", "https://app.example/x").id
    assert len(sleeps) == 1


def test_connection_errors_exhausted(client: Client, vault: FakeVault, sleeps: Sleeps) -> None:
    vault.queued += [httpx.ConnectError("refused")] * 4
    with pytest.raises(TransportError):
        client.providers.list()
    assert len(sleeps) == 3


def test_export_tokens_not_retried_on_read_error(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    vault.queued.append(httpx.ReadError("reset"))
    with pytest.raises(TransportError):
        client.connect.export_tokens("s")
    assert sleeps == []


def test_proxy_does_not_retry_provider_503(
    client: Client, vault: FakeVault, sleeps: Sleeps
) -> None:
    vault.queued.append(httpx.Response(503, headers={"Retry-After": "1"}, text="provider busy"))
    response = client.proxy.get("g", "x")
    assert response.status_code == 503 and sleeps == []
    gid = vault.add_grant()
    vault.queued.append(unavailable("1"))
    assert client.proxy.get(gid, "x").status_code == 200
    assert len(sleeps) == 1


def test_parse_retry_after() -> None:
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    http_date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(http_date, now=now) == 30.0


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
