"""``httpx.Auth`` adapters that stamp a grant's access token on provider calls.

``GrantAuth`` (from ``Client.auth``) and ``AsyncGrantAuth`` (from
``AsyncClient.auth``) fetch the token from the vault, cache it until it is
within ``min_ttl`` seconds of expiry, stamp ``Authorization: Bearer ...`` and,
when the provider answers 401, force one refresh and retry the request once.
Fetches are single-flight: concurrent requests share one vault call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx

from ._models import AccessToken

if TYPE_CHECKING:
    from ._async_client import AsyncClient
    from ._client import Client

__all__ = ["AsyncGrantAuth", "GrantAuth"]


class _TokenCache:
    """The current token and its expiry on the monotonic clock.

    A token is fresh while more than ``min_ttl`` seconds remain, or half of the
    lifetime it had when we received it if that is less: the vault never
    promises more than half a token's lifetime, so asking it again earlier
    would only return the same token (a vault call per request for tokens
    that live shorter than ``min_ttl``).
    """

    __slots__ = ("min_ttl", "clock", "token", "deadline", "threshold")

    def __init__(self, min_ttl: int, clock: Callable[[], float]) -> None:
        if min_ttl < 0:
            raise ValueError("min_ttl must be >= 0")
        self.min_ttl = min_ttl
        self.clock = clock
        self.token: AccessToken | None = None
        self.deadline: float | None = None
        self.threshold: float = float(min_ttl)

    def fresh(self) -> AccessToken | None:
        """The cached token if it stays valid for more than ``min_ttl`` seconds."""
        token = self.token
        if token is None:
            return None
        if self.deadline is not None and self.deadline - self.clock() <= self.threshold:
            return None
        return token

    def store(self, token: AccessToken) -> None:
        now = self.clock()
        if token.expires_in is not None:
            # Relative lifetimes are immune to clock skew between us and the vault.
            self.deadline = now + token.expires_in
        elif token.expires_at is not None:
            self.deadline = now + (token.expires_at - datetime.now(UTC)).total_seconds()
        else:
            # No expiry known: use it until the provider answers 401.
            self.deadline = None
        self.threshold = float(self.min_ttl)
        if self.deadline is not None:
            self.threshold = min(self.threshold, max(self.deadline - now, 0.0) / 2)
        self.token = token

    def clear(self) -> None:
        self.token = None
        self.deadline = None

    def superseded(self, stale: str) -> AccessToken | None:
        """A token other than ``stale`` that another caller fetched meanwhile."""
        token = self.fresh()
        if token is not None and token.access_token != stale:
            return token
        return None


def _stamp(request: httpx.Request, token: AccessToken) -> None:
    request.headers["Authorization"] = token.authorization


class GrantAuth(httpx.Auth):
    """``httpx.Auth`` backed by a sync ``Client``; see ``Client.auth``.

    Works with ``httpx.Client`` and, by calling the vault in a worker thread,
    with ``httpx.AsyncClient`` too.
    """

    requires_request_body = True  # the body is replayed after a 401

    def __init__(
        self,
        client: Client,
        grant_id: str,
        *,
        min_ttl: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.grant_id = grant_id
        self._cache = _TokenCache(min_ttl, clock)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GrantAuth(grant_id={self.grant_id!r}, min_ttl={self._cache.min_ttl})"

    def get_token(self, *, force_refresh: bool = False, stale: str | None = None) -> AccessToken:
        """The cached token, or a new one from the vault.

        With ``force_refresh`` the vault refreshes at the provider, unless
        another thread already replaced ``stale`` (the token that was rejected).
        """
        with self._lock:
            if force_refresh:
                if stale is not None and (token := self._cache.superseded(stale)) is not None:
                    return token
            elif (token := self._cache.fresh()) is not None:
                return token
            token = self._client.grants.token(
                self.grant_id, min_ttl=self._cache.min_ttl, force_refresh=force_refresh
            )
            self._cache.store(token)
            return token

    def invalidate(self) -> None:
        """Forget the cached token."""
        with self._lock:
            self._cache.clear()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.get_token()
        _stamp(request, token)
        response = yield request
        if response.status_code == 401:
            token = self.get_token(force_refresh=True, stale=token.access_token)
            _stamp(request, token)
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await anyio.to_thread.run_sync(self.get_token)
        _stamp(request, token)
        response = yield request
        if response.status_code == 401:
            stale = token.access_token

            def refresh() -> AccessToken:
                return self.get_token(force_refresh=True, stale=stale)

            token = await anyio.to_thread.run_sync(refresh)
            _stamp(request, token)
            yield request


class AsyncGrantAuth(httpx.Auth):
    """``httpx.Auth`` backed by an ``AsyncClient``; see ``AsyncClient.auth``.

    Only for ``httpx.AsyncClient``; use ``Client.auth`` with ``httpx.Client``.
    """

    requires_request_body = True

    def __init__(
        self,
        client: AsyncClient,
        grant_id: str,
        *,
        min_ttl: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.grant_id = grant_id
        self._cache = _TokenCache(min_ttl, clock)
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"AsyncGrantAuth(grant_id={self.grant_id!r}, min_ttl={self._cache.min_ttl})"

    async def get_token(
        self, *, force_refresh: bool = False, stale: str | None = None
    ) -> AccessToken:
        """Async twin of ``GrantAuth.get_token``."""
        async with self._lock:
            if force_refresh:
                if stale is not None and (token := self._cache.superseded(stale)) is not None:
                    return token
            elif (token := self._cache.fresh()) is not None:
                return token
            token = await self._client.grants.token(
                self.grant_id, min_ttl=self._cache.min_ttl, force_refresh=force_refresh
            )
            self._cache.store(token)
            return token

    def invalidate(self) -> None:
        """Forget the cached token."""
        self._cache.clear()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError(
            "AsyncClient.auth() works with httpx.AsyncClient only; "
            "use grantkeeper.client.Client(...).auth() with httpx.Client"
        )
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.get_token()
        _stamp(request, token)
        response = yield request
        if response.status_code == 401:
            token = await self.get_token(force_refresh=True, stale=token.access_token)
            _stamp(request, token)
            yield request
