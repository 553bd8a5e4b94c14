from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sdk_fakes import API_KEY, BASE_URL, FakeVault, Sleeps, problem

from grantkeeper.client import (
    AsyncClient,
    GrantInvalidError,
    IntegrationInUseError,
    ProviderUnavailableError,
    TransportError,
)

pytestmark = pytest.mark.anyio

Factory = Callable[..., AsyncClient]


async def test_context_manager_and_repr(aclient_factory: Factory) -> None:
    async with aclient_factory() as client:
        assert API_KEY not in repr(client)
        assert repr(client) == f"AsyncClient(base_url='{BASE_URL}', api_key='**********')"
    assert client._http.is_closed


async def test_resources(aclient_factory: Factory, vault: FakeVault) -> None:
    async with aclient_factory() as client:
        assert [p.name for p in await client.providers.list()] == ["google", "oidc"]
        assert (await client.providers.get("google")).name == "google"
        integration = await client.integrations.put(
            "google-mail", provider="google", client_id="c", client_secret="s"
        )
        assert integration.client_secret_set
        assert (await client.integrations.get("google-mail")).id == "google-mail"
        assert len(await client.integrations.list()) == 1
        session = await client.connect.create_session("google-mail", "u", "https://app.example/x")
        assert (await client.connect.get_session(session.id)).status == "pending"
        assert (await client.connect.export_tokens(session.id)).access_token
        grant = await client.grants.import_("google-mail", "u", "1//r", verify=False)
        assert (await client.grants.get(grant.id)).user_id == "u"
        with pytest.raises(IntegrationInUseError):
            await client.integrations.delete("google-mail")
        token = await client.token(grant.id, min_ttl=120)
        assert token.expires_at == datetime(2026, 5, 1, 13, tzinfo=UTC)
        assert vault.token_calls[-1] == {"min_ttl": 120}
        assert (await client.grants.reconnect(grant.id, "https://app.example/y")).connect_url
        assert (await client.grants.delete(grant.id)).provider_revocation == "succeeded"
        endpoint = await client.webhook_endpoints.create("https://app.example/h", ["grant.created"])
        assert endpoint.secret
        assert len(await client.webhook_endpoints.list()) == 1
        assert (await client.webhook_endpoints.get(endpoint.id)).id == endpoint.id
        await client.webhook_endpoints.delete(endpoint.id)
        assert (await client.audit_events.list(grant_id=grant.id)).data[0].grant_id == grant.id
        response = await client.proxy.post(grant.id, "a/b", json={"x": 1})
        assert response.json()["path"] == "a/b"


async def test_iter(aclient_factory: Factory, vault: FakeVault) -> None:
    ids = [vault.add_grant(f"g{i}") for i in range(7)]
    async with aclient_factory() as client:
        seen = [g.id async for g in client.grants.iter(limit=3)]
        page = await client.grants.list(limit=3, offset=6)
    assert seen == ids
    assert page.next_offset is None


async def test_retries_use_async_sleep(
    aclient_factory: Factory, vault: FakeVault, sleeps: Sleeps
) -> None:
    gid = vault.add_grant()
    vault.queued += [
        problem(503, "provider_unavailable", headers={"Retry-After": "1"}),
        httpx.ConnectError("refused"),
    ]
    async with aclient_factory() as client:
        assert (await client.token(gid)).access_token == "at-1"
    assert len(sleeps) == 2 and 1.0 <= sleeps[0] <= 1.1


async def test_errors(aclient_factory: Factory, vault: FakeVault) -> None:
    vault.queued += [problem(503, "provider_unavailable", headers={"Retry-After": "5"})] * 2
    async with aclient_factory(max_retries=1) as client:
        with pytest.raises(ProviderUnavailableError) as info:
            await client.token("g")
        assert info.value.retry_after == 5
        with pytest.raises(GrantInvalidError):
            await client.token(vault.add_grant(status="invalid"))
        vault.queued.append(httpx.ReadTimeout("slow"))
        with pytest.raises(TransportError):
            await client.connect.create_session("i", "u", "https://app.example/")


async def test_bring_your_own_http_client(vault: FakeVault) -> None:
    http = httpx.AsyncClient(transport=vault.transport())
    async with AsyncClient(BASE_URL, API_KEY, http_client=http) as client:
        assert await client.providers.list()
    assert not http.is_closed
    await http.aclose()


async def test_default_sleep_is_anyio(vault: FakeVault) -> None:
    vault.queued.append(problem(429, "rate_limited", headers={"Retry-After": "0"}))
    async with AsyncClient(BASE_URL, API_KEY, transport=vault.transport()) as client:
        assert await client.providers.list()


def test_sync_retry_default_sleep(vault: FakeVault, monkeypatch: Any) -> None:
    from grantkeeper.client import Client

    vault.queued.append(problem(429, "rate_limited", headers={"Retry-After": "0"}))
    with Client(BASE_URL, API_KEY, transport=vault.transport()) as client:
        assert client.providers.list()
