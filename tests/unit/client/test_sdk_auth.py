"""client.auth(): an httpx.Auth that talks to the provider with the vault's token."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sdk_fakes import FakeVault

from grantkeeper.client import AsyncClient, Client, GrantAuth, GrantInvalidError

PROVIDER = "https://api.provider.test"


class FakeProvider:
    """Accepts only the grant's current token, as the vault minted it."""

    def __init__(self, vault: FakeVault, grant_id: str) -> None:
        self.vault = vault
        self.grant_id = grant_id
        self.seen: list[str | None] = []
        self.always_401 = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization")
        self.seen.append(header)
        current = self.vault.current_token.get(self.grant_id)
        if self.always_401 or header != f"Bearer {current}":
            return httpx.Response(401, json={"error": "invalid_token"})
        return httpx.Response(200, json={"ok": True, "body": request.content.decode()})


@pytest.fixture
def grant_id(vault: FakeVault) -> str:
    return vault.add_grant()


@pytest.fixture
def provider(vault: FakeVault, grant_id: str) -> FakeProvider:
    return FakeProvider(vault, grant_id)


@pytest.fixture
def http(client: Client, grant_id: str, provider: FakeProvider) -> Iterator[httpx.Client]:
    with httpx.Client(auth=client.auth(grant_id), transport=httpx.MockTransport(provider)) as h:
        yield h


def test_stamps_bearer_and_caches(
    http: httpx.Client, vault: FakeVault, provider: FakeProvider
) -> None:
    for _ in range(3):
        assert http.get(f"{PROVIDER}/me").status_code == 200
    assert provider.seen == ["Bearer at-1"] * 3
    assert len(vault.token_calls) == 1
    assert vault.token_calls[0] == {"min_ttl": 60}


def test_refreshes_once_on_401(
    http: httpx.Client, vault: FakeVault, provider: FakeProvider, grant_id: str
) -> None:
    http.get(f"{PROVIDER}/me")
    vault.current_token[grant_id] = "rotated-elsewhere"  # the provider no longer accepts at-1
    response = http.post(f"{PROVIDER}/send", content=b"payload")
    assert response.status_code == 200
    assert response.json()["body"] == "payload"  # the body was replayed
    assert vault.token_calls[-1] == {"min_ttl": 60, "force_refresh": True}
    assert provider.seen[-2:] == ["Bearer at-1", "Bearer at-2"]
    assert len(response.history) == 1 and response.history[0].status_code == 401
    # The refreshed token is cached.
    http.get(f"{PROVIDER}/me")
    assert len(vault.token_calls) == 2


def test_gives_up_after_one_retry(
    http: httpx.Client, vault: FakeVault, provider: FakeProvider
) -> None:
    provider.always_401 = True
    response = http.get(f"{PROVIDER}/me")
    assert response.status_code == 401
    assert len(provider.seen) == 2
    assert len(vault.token_calls) == 2


def test_refetches_near_expiry(client: Client, vault: FakeVault, grant_id: str) -> None:
    now = [1000.0]
    auth = GrantAuth(client, grant_id, min_ttl=60, clock=lambda: now[0])
    vault.token_lifetime = 200
    assert auth.get_token().access_token == "at-1"
    now[0] += 139  # 61 s left: still fresh
    assert auth.get_token().access_token == "at-1"
    assert len(vault.token_calls) == 1
    now[0] += 1  # 60 s left: within min_ttl
    auth.get_token()
    assert len(vault.token_calls) == 2
    auth.invalidate()
    auth.get_token()
    assert len(vault.token_calls) == 3


def test_expiry_from_expires_at_when_no_expires_in(
    client: Client, vault: FakeVault, grant_id: str
) -> None:
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    vault.queued.append(
        httpx.Response(
            200,
            json={
                "access_token": "short",
                "token_type": "bearer",
                "expires_at": soon,
                "scopes": [],
                "grant_id": grant_id,
            },
        )
    )
    now = [1000.0]
    auth = GrantAuth(client, grant_id, min_ttl=60, clock=lambda: now[0])
    assert auth.get_token().access_token == "short"
    # 30 s left, shorter than min_ttl: the vault could not do better, so it is
    # used until half its lifetime is gone
    assert auth.get_token().access_token == "short"
    now[0] += 16  # 14 s left
    assert auth.get_token().access_token == "at-1"


def test_short_lived_tokens_are_cached_for_half_their_lifetime(
    client: Client, vault: FakeVault, grant_id: str
) -> None:
    now = [1000.0]
    auth = GrantAuth(client, grant_id, min_ttl=300, clock=lambda: now[0])
    vault.token_lifetime = 60
    assert auth.get_token().access_token == "at-1"
    now[0] += 29
    assert auth.get_token().access_token == "at-1"
    assert len(vault.token_calls) == 1
    now[0] += 1
    auth.get_token()
    assert len(vault.token_calls) == 2


def test_no_expiry_is_cached_until_401(client: Client, vault: FakeVault, grant_id: str) -> None:
    vault.queued.append(
        httpx.Response(
            200,
            json={
                "access_token": "forever",
                "token_type": "Bearer",
                "scopes": [],
                "grant_id": grant_id,
            },
        )
    )
    auth = client.auth(grant_id)
    assert auth.get_token().access_token == "forever"
    assert auth.get_token().access_token == "forever"
    assert len(vault.requests) == 1


def test_grant_invalid_propagates(client: Client, vault: FakeVault) -> None:
    gid = vault.add_grant(status="invalid")
    with httpx.Client(
        auth=client.auth(gid), transport=httpx.MockTransport(lambda r: httpx.Response(200))
    ) as http:
        with pytest.raises(GrantInvalidError):
            http.get(f"{PROVIDER}/me")


def test_thread_safe_single_flight(client: Client, vault: FakeVault, grant_id: str) -> None:
    original = vault.grant_token

    def slow_token(*args: object) -> httpx.Response:
        time.sleep(0.05)
        return original(*args)  # type: ignore[arg-type]

    vault.routes = [
        (p, m, (lambda self, *a: slow_token(*a)) if h is FakeVault.grant_token else h)
        for p, m, h in FakeVault.routes
    ]
    auth = client.auth(grant_id)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(auth.get_token().access_token))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["at-1"] * 8
    assert len(vault.token_calls) == 1


def test_concurrent_401s_refresh_once(client: Client, vault: FakeVault, grant_id: str) -> None:
    auth = client.auth(grant_id)
    first = auth.get_token()
    a = auth.get_token(force_refresh=True, stale=first.access_token)
    b = auth.get_token(force_refresh=True, stale=first.access_token)  # already replaced
    assert a.access_token == b.access_token == "at-2"
    assert len(vault.token_calls) == 2


def test_repr_has_no_secrets(client: Client, grant_id: str) -> None:
    auth = client.auth(grant_id)
    auth.get_token()
    assert "at-1" not in repr(auth)
    assert grant_id in repr(auth)


@pytest.mark.anyio
async def test_sync_grant_auth_works_in_async_client(
    client: Client, vault: FakeVault, provider: FakeProvider, grant_id: str
) -> None:
    async with httpx.AsyncClient(
        auth=client.auth(grant_id), transport=httpx.MockTransport(provider)
    ) as http:
        assert (await http.get(f"{PROVIDER}/me")).status_code == 200
        vault.current_token[grant_id] = "rotated"
        assert (await http.get(f"{PROVIDER}/me")).status_code == 200
    assert provider.seen == ["Bearer at-1", "Bearer at-1", "Bearer at-2"]


@pytest.mark.anyio
async def test_async_grant_auth(
    aclient_factory: object, vault: FakeVault, provider: FakeProvider, grant_id: str
) -> None:
    import anyio

    async with aclient_factory() as vault_client:  # type: ignore[operator]
        assert isinstance(vault_client, AsyncClient)
        auth = vault_client.auth(grant_id)
        async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(provider)) as http:
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(http.get, f"{PROVIDER}/me")
            assert len(vault.token_calls) == 1  # single flight
            vault.current_token[grant_id] = "rotated"
            response = await http.post(f"{PROVIDER}/x", content=b"hello")
            assert response.status_code == 200 and response.json()["body"] == "hello"
            assert vault.token_calls[-1] == {"min_ttl": 60, "force_refresh": True}
            provider.always_401 = True
            assert (await http.get(f"{PROVIDER}/me")).status_code == 401

        with httpx.Client(auth=auth, transport=httpx.MockTransport(provider)) as sync_http:
            with pytest.raises(RuntimeError, match="AsyncClient"):
                sync_http.get(f"{PROVIDER}/me")
