"""The asynchronous client, over ``httpx.AsyncClient``."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import httpx

from . import _calls as calls
from ._base import ClientConfig, describe, logger
from ._exceptions import TransportError, error_from_response, problem_body
from ._models import (
    AccessToken,
    AuditEvent,
    ConnectSession,
    ConnectSessionStatus,
    Credentials,
    ExportedTokens,
    Grant,
    Integration,
    Page,
    Provider,
    Revocation,
    WebhookEndpoint,
)
from ._retry import IDEMPOTENT_METHODS

if TYPE_CHECKING:
    from ._auth import AsyncGrantAuth
    from ._stamp import Stamp

T = TypeVar("T")


class AsyncClient:
    """Asynchronous client for the grantkeeper vault API.

    ```python
    async with AsyncClient("https://vault.example", api_key) as vault:
        token = await vault.token(grant_id, min_ttl=300)
    ```

    Calls are grouped by resource: ``providers``, ``integrations``,
    ``connect``, ``grants``, ``webhook_endpoints``, ``audit_events`` and
    ``proxy``. Errors raise subclasses of ``GrantkeeperClientError``.

    ``http_client`` lets you bring your own ``httpx.AsyncClient`` (its timeout and
    transport are then used; the SDK does not close it). ``sleep`` replaces
    ``anyio.sleep`` between retries (a test seam).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_retry_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._config = ClientConfig(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_retry_wait=max_retry_wait,
        )
        if http_client is not None and transport is not None:
            raise ValueError("pass either transport or http_client, not both")
        if http_client is None:
            self._http = httpx.AsyncClient(
                timeout=timeout, transport=transport, follow_redirects=False
            )
            self._owns_http = True
        else:
            self._http = http_client
            self._owns_http = False
        self._sleep: Callable[[float], Awaitable[object]] = (
            sleep if sleep is not None else anyio.sleep
        )
        self.providers = Providers(self)
        self.integrations = Integrations(self)
        self.connect = Connect(self)
        self.grants = Grants(self)
        self.webhook_endpoints = WebhookEndpoints(self)
        self.audit_events = AuditEvents(self)
        self.proxy = Proxy(self)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def __repr__(self) -> str:
        return self._config.repr_for(type(self).__name__)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying ``httpx.AsyncClient`` (unless it was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    # -- conveniences ----------------------------------------------------------

    async def credentials(self, grant_id: str) -> Credentials:
        """A grant's credentials, whatever its kind (``POST /v1/grants/{id}/credentials``)."""
        return await self.grants.credentials(grant_id)

    async def token(
        self, grant_id: str, *, min_ttl: int | None = None, force_refresh: bool = False
    ) -> AccessToken:
        """Shortcut for ``grants.token``."""
        return await self.grants.token(grant_id, min_ttl=min_ttl, force_refresh=force_refresh)

    def auth(
        self,
        grant_id: str,
        *,
        min_ttl: int = 60,
        stamp: Stamp | Mapping[str, Any] | None = None,
    ) -> AsyncGrantAuth:
        """An ``httpx.Auth`` for ``httpx.AsyncClient`` that stamps the grant's
        credential on requests, any kind; see ``Client.auth``."""
        from ._auth import AsyncGrantAuth

        return AsyncGrantAuth(self, grant_id, min_ttl=min_ttl, stamp=stamp)

    # -- plumbing --------------------------------------------------------------

    async def _call(self, call: calls.Call[T]) -> T:
        response = await self._send(
            call.method, call.path, params=call.params, json=call.json, idempotent=call.idempotent
        )
        return call.parse(response)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Any = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        timeout: Any = None,
        proxied: bool = False,
    ) -> httpx.Response:
        config = self._config
        url = config.url(path)
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    content=content,
                    data=data,
                    files=files,
                    headers=config.headers(headers),
                    **extra,
                )
            except httpx.RequestError as exc:
                delay = config.policy.delay_for_error(exc, attempt, idempotent=idempotent)
                if delay is None:
                    raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                logger.info(
                    "grantkeeper: %s %s failed (%s); retry %d in %.2fs",
                    method,
                    path,
                    type(exc).__name__,
                    attempt + 1,
                    delay,
                )
                await self._sleep(delay)
                attempt += 1
                continue
            logger.debug("grantkeeper: %s", describe(response))
            delay = config.policy.delay_for_response(
                response, attempt, idempotent=idempotent, vault_problems_only=proxied
            )
            if delay is not None:
                await response.aclose()
                logger.info(
                    "grantkeeper: %s; retry %d in %.2fs", describe(response), attempt + 1, delay
                )
                await self._sleep(delay)
                attempt += 1
                continue
            if proxied:
                if problem_body(response).get("code") in calls.PROXY_RAISED_CODES:
                    raise error_from_response(response)
                return response
            if not response.is_success:
                raise error_from_response(response)
            return response


class _Resource:
    __slots__ = ("_client",)

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._client!r}>"


class Providers(_Resource):
    """The provider catalog."""

    async def list(
        self, category: str | None = None, q: str | None = None
    ) -> builtins.list[Provider]:
        return await self._client._call(calls.list_providers(category, q))

    async def get(self, name: str) -> Provider:
        return await self._client._call(calls.get_provider(name))


class Integrations(_Resource):
    """Integrations: a provider plus the app's OAuth client."""

    async def put(
        self,
        integration_id: str,
        *,
        provider: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        scopes: Sequence[str] | None = None,
        return_urls: Sequence[str] | None = None,
        authorization_params: Mapping[str, Any] | None = None,
        issuer: str | None = None,
        endpoints: Mapping[str, Any] | None = None,
        api_base_url: str | None = None,
        token_export: Literal["never", "once"] | None = None,
        **fields: Any,
    ) -> Integration:
        """Create or replace an integration. ``None`` arguments are left out;
        ``fields`` passes members this SDK does not name yet."""
        body = dict(
            provider=provider,
            client_id=client_id,
            client_secret=client_secret,
            scopes=scopes,
            return_urls=return_urls,
            authorization_params=authorization_params,
            issuer=issuer,
            endpoints=endpoints,
            api_base_url=api_base_url,
            token_export=token_export,
        )
        body.update(fields)
        return await self._client._call(calls.put_integration(integration_id, body))

    async def get(self, integration_id: str) -> Integration:
        return await self._client._call(calls.get_integration(integration_id))

    async def list(self) -> builtins.list[Integration]:
        return await self._client._call(calls.list_integrations())

    async def delete(self, integration_id: str) -> None:
        """Delete; raises ``IntegrationInUseError`` while grants exist."""
        await self._client._call(calls.delete_integration(integration_id))


class Connect(_Resource):
    """Connect sessions: the OAuth dance."""

    async def create_session(
        self,
        integration_id: str,
        user_id: str,
        return_to: str,
        scopes: Sequence[str] | None = None,
    ) -> ConnectSession:
        return await self._client._call(
            calls.create_session(integration_id, user_id, return_to, scopes)
        )

    async def get_session(self, session_id: str) -> ConnectSessionStatus:
        return await self._client._call(calls.get_session(session_id))

    async def export_tokens(self, session_id: str) -> ExportedTokens:
        """The provider's tokens, once, for ``token_export: "once"`` integrations."""
        return await self._client._call(calls.export_tokens(session_id))


class Grants(_Resource):
    """Grants: one user's authorization of one integration."""

    async def list(
        self,
        integration_id: str | None = None,
        user_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page[Grant]:
        return await self._client._call(
            calls.list_grants(integration_id, user_id, status, limit, offset)
        )

    async def iter(
        self,
        integration_id: str | None = None,
        user_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Grant]:
        """Every matching grant, fetching pages (of ``limit``) as needed."""
        offset: int | None = None
        while True:
            page = await self.list(integration_id, user_id, status, limit, offset)
            for grant in page.data:
                yield grant
            if page.next_offset is None or page.next_offset == offset:
                return
            offset = page.next_offset

    async def get(self, grant_id: str) -> Grant:
        return await self._client._call(calls.get_grant(grant_id))

    async def import_(
        self,
        integration_id: str,
        user_id: str,
        refresh_token: str,
        access_token: str | None = None,
        expires_at: datetime | str | None = None,
        scopes: Sequence[str] | None = None,
        verify: bool = True,
    ) -> Grant:
        """Import tokens obtained elsewhere (bring your own authorization)."""
        return await self._client._call(
            calls.import_grant(
                integration_id, user_id, refresh_token, access_token, expires_at, scopes, verify
            )
        )

    async def token(
        self, grant_id: str, min_ttl: int | None = None, force_refresh: bool = False
    ) -> AccessToken:
        """An access token valid for at least ``min_ttl`` seconds."""
        return await self._client._call(calls.grant_token(grant_id, min_ttl, force_refresh))

    async def credentials(self, grant_id: str) -> Credentials:
        """The grant's credentials (``type`` and the kind's fields); audited."""
        return await self._client._call(calls.grant_credentials(grant_id))

    async def reconnect(self, grant_id: str, return_to: str) -> ConnectSession:
        """A connect session that re-authorizes the same user and integration."""
        return await self._client._call(calls.reconnect_grant(grant_id, return_to))

    async def delete(self, grant_id: str) -> Revocation:
        """Revoke at the provider where possible and destroy the stored secrets."""
        return await self._client._call(calls.delete_grant(grant_id))


class WebhookEndpoints(_Resource):
    async def create(self, url: str, events: Sequence[str]) -> WebhookEndpoint:
        """Create an endpoint; the returned ``secret`` is shown only this once."""
        return await self._client._call(calls.create_webhook_endpoint(url, events))

    async def list(self) -> builtins.list[WebhookEndpoint]:
        return await self._client._call(calls.list_webhook_endpoints())

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._client._call(calls.get_webhook_endpoint(endpoint_id))

    async def delete(self, endpoint_id: str) -> None:
        await self._client._call(calls.delete_webhook_endpoint(endpoint_id))


class AuditEvents(_Resource):
    async def list(
        self, grant_id: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> Page[AuditEvent]:
        return await self._client._call(calls.list_audit_events(grant_id, limit, offset))


class Proxy(_Resource):
    """Calls to the provider's API through the vault.

    The provider's response is returned unchanged (no exception for 4xx/5xx),
    except for the vault's own ``grant_invalid``, ``grant_revoked`` and
    ``provider_unavailable`` problems, which raise. Use
    ``error_from_response`` to turn any other response into an exception.
    """

    async def request(
        self,
        grant_id: str,
        method: str,
        path: str,
        *,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        timeout: Any = None,
    ) -> httpx.Response:
        method = method.upper()
        return await self._client._send(
            method,
            calls.proxy_path(grant_id, path),
            params=params,
            headers=headers,
            content=content,
            data=data,
            files=files,
            json=json,
            timeout=timeout,
            idempotent=method in IDEMPOTENT_METHODS,
            proxied=True,
        )

    async def get(self, grant_id: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(grant_id, "GET", path, **kwargs)

    async def post(self, grant_id: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(grant_id, "POST", path, **kwargs)

    async def put(self, grant_id: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(grant_id, "PUT", path, **kwargs)

    async def patch(self, grant_id: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(grant_id, "PATCH", path, **kwargs)

    async def delete(self, grant_id: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(grant_id, "DELETE", path, **kwargs)
