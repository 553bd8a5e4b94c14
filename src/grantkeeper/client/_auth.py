"""``httpx.Auth`` adapters that stamp a grant's credential on provider calls, any kind.

``GrantAuth`` (from ``Client.auth``) and ``AsyncGrantAuth`` (from
``AsyncClient.auth``) fetch the token from the vault, cache it until it is
within ``min_ttl`` seconds of expiry, stamp ``Authorization: Bearer ...`` and,
when the provider answers 401, force one refresh and retry the request once.
Fetches are single-flight: concurrent requests share one vault call.

Grants without an access token (``/token`` answers 409 ``no_access_token``: ``api_key``,
``basic``) are stamped from ``POST /v1/grants/{id}/credentials`` the way the integration's
``stamp`` says (bearer, a named header, a query parameter, HTTP Basic): given to ``auth()``,
or looked up once (the grant, its integration, else its catalog entry). A 401 re-reads the
credentials once and retries only if they changed. ``oauth1`` grants raise
``UnsupportedGrantKindError``: they go through the vault's proxy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import httpx

from ._exceptions import ConflictError, GrantkeeperClientError, PermissionDeniedError
from ._models import AccessToken, Credentials
from ._stamp import BEARER, Stamp, rendered

if TYPE_CHECKING:
    from ._async_client import AsyncClient
    from ._client import Client

__all__ = ["AsyncGrantAuth", "GrantAuth", "Stamped"]


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


@dataclass(frozen=True, slots=True, repr=False)
class Stamped:
    """One credential rendered for a request: a header or a query parameter. ``key`` tells
    one credential from the next (a retry after 401 only makes sense with a new one)."""

    where: str
    name: str
    value: str
    key: str

    def __repr__(self) -> str:
        return f"Stamped(where={self.where!r}, name={self.name!r})"

    def apply(self, request: httpx.Request) -> None:
        if self.where == "query":
            request.url = request.url.copy_set_param(self.name, self.value)
        else:
            request.headers[self.name] = self.value


def _from_token(stamp: Stamp | None, token: AccessToken) -> Stamped:
    if stamp is None:
        return Stamped("header", "Authorization", token.authorization, token.access_token)
    where, name, value = rendered(stamp, "token", {"access_token": token.access_token})
    return Stamped(where, name, value, token.access_token)


def _from_credentials(stamp: Stamp, creds: Credentials) -> Stamped:
    where, name, value = rendered(stamp, creds.type, creds.values)
    key = "\x00".join(f"{k}={v}" for k, v in sorted(creds.values.items()))
    return Stamped(where, name, value, key)


def _stamp_of(integration_stamp: Any, provider_stamp: Any) -> Stamp:
    return Stamp.from_json(integration_stamp or provider_stamp or None)


_NO_LOOKUP = (
    "auth() needs the integration's stamp for this grant and the API key may not read the "
    "grant or its integration: pass stamp={'in': ..., 'name': ..., 'template': ...} to auth(), "
    "or use a key with grants:read and integrations:read"
)


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
        stamp: Stamp | Mapping[str, Any] | None = None,
    ) -> None:
        self._client = client
        self.grant_id = grant_id
        self._cache = _TokenCache(min_ttl, clock)
        self._lock = threading.Lock()
        self._stamp = stamp if isinstance(stamp, Stamp | None) else Stamp.from_json(stamp)
        #: None until the first call says whether ``/token`` serves this grant
        self._has_token: bool | None = None
        self._creds: Credentials | None = None

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
        """Forget the cached token or credentials."""
        with self._lock:
            self._cache.clear()
            self._creds = None

    def stamped(self, *, renew: bool = False, stale: str | None = None) -> Stamped:
        """The grant's credential rendered for a request, whatever its kind.

        ``renew``: after a 401 with the credential whose ``key`` is ``stale``: a forced
        refresh (token kinds) or a fresh read of the credentials (``api_key``, ``basic``).
        """
        if self._has_token is not False:
            try:
                token = self.get_token(force_refresh=renew, stale=stale)
            except ConflictError as exc:
                if exc.code != "no_access_token":
                    raise
                self._has_token = False
            else:
                self._has_token = True
                return _from_token(self._stamp, token)
        with self._lock:
            creds = self._creds
            if creds is None or renew:
                creds = self._client.grants.credentials(self.grant_id)
                self._creds = creds
            if self._stamp is None and creds.type != "oauth1":
                self._stamp = self._lookup_stamp()
            return _from_credentials(self._stamp or BEARER, creds)

    def _lookup_stamp(self) -> Stamp:
        try:
            grant = self._client.grants.get(self.grant_id)
            integ = self._client.integrations.get(grant.integration_id)
            provider = integ.extra.get("stamp") or None
            if provider is None:
                provider = self._client.providers.get(integ.provider).extra.get("stamp")
        except PermissionDeniedError as exc:
            raise GrantkeeperClientError(_NO_LOOKUP) from exc
        return _stamp_of(integ.extra.get("stamp"), provider)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        first = self.stamped()
        first.apply(request)
        response = yield request
        if response.status_code == 401:
            again = self.stamped(renew=True, stale=first.key)
            if again.key != first.key:
                again.apply(request)
                yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        first = await anyio.to_thread.run_sync(self.stamped)
        first.apply(request)
        response = yield request
        if response.status_code == 401:
            stale = first.key

            def renew() -> Stamped:
                return self.stamped(renew=True, stale=stale)

            again = await anyio.to_thread.run_sync(renew)
            if again.key != first.key:
                again.apply(request)
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
        stamp: Stamp | Mapping[str, Any] | None = None,
    ) -> None:
        self._client = client
        self.grant_id = grant_id
        self._cache = _TokenCache(min_ttl, clock)
        self._lock = anyio.Lock()
        self._stamp = stamp if isinstance(stamp, Stamp | None) else Stamp.from_json(stamp)
        self._has_token: bool | None = None
        self._creds: Credentials | None = None

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
        """Forget the cached token or credentials."""
        self._cache.clear()
        self._creds = None

    async def stamped(self, *, renew: bool = False, stale: str | None = None) -> Stamped:
        """Async twin of ``GrantAuth.stamped``."""
        if self._has_token is not False:
            try:
                token = await self.get_token(force_refresh=renew, stale=stale)
            except ConflictError as exc:
                if exc.code != "no_access_token":
                    raise
                self._has_token = False
            else:
                self._has_token = True
                return _from_token(self._stamp, token)
        async with self._lock:
            creds = self._creds
            if creds is None or renew:
                creds = await self._client.grants.credentials(self.grant_id)
                self._creds = creds
            if self._stamp is None and creds.type != "oauth1":
                self._stamp = await self._lookup_stamp()
            return _from_credentials(self._stamp or BEARER, creds)

    async def _lookup_stamp(self) -> Stamp:
        try:
            grant = await self._client.grants.get(self.grant_id)
            integ = await self._client.integrations.get(grant.integration_id)
            provider = integ.extra.get("stamp") or None
            if provider is None:
                provider = (await self._client.providers.get(integ.provider)).extra.get("stamp")
        except PermissionDeniedError as exc:
            raise GrantkeeperClientError(_NO_LOOKUP) from exc
        return _stamp_of(integ.extra.get("stamp"), provider)

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
        first = await self.stamped()
        first.apply(request)
        response = yield request
        if response.status_code == 401:
            again = await self.stamped(renew=True, stale=first.key)
            if again.key != first.key:
                again.apply(request)
                yield request
