"""Integrations: one environment's use of a provider with the app's own OAuth client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.clock import iso
from grantkeeper.errors import InvalidInput, NotFound
from grantkeeper.inputs import IntegrationInput
from grantkeeper.kinds import mcp as mcp_kind
from grantkeeper.netguard import check_url
from grantkeeper.oauth.tokens import ClientCredentials
from grantkeeper.providers import ProviderSpec
from grantkeeper.providers.catalog import CODE_MODES, stamp_problem
from grantkeeper.returnurls import validate_return_url
from grantkeeper.runtime import Runtime
from grantkeeper.store import integrations as store
from grantkeeper.store import signals as signal_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import IntegrationRecord
from grantkeeper.vault import aad_for

__all__ = [
    "ResolvedIntegration",
    "events_secret_aad",
    "private_key_aad",
    "get_or_404",
    "integration_view",
    "prepare_mcp",
    "put_integration",
    "registration_token_aad",
    "resolve",
    "secret_aad",
]


def secret_aad(environment_id: str, integration_id: str) -> bytes:
    return aad_for(environment_id, "integrations", integration_id, "client_secret")


def private_key_aad(environment_id: str, integration_id: str) -> bytes:
    return aad_for(environment_id, "integrations", integration_id, "private_key")


def events_secret_aad(environment_id: str, integration_id: str) -> bytes:
    """The provider-events secret (Slack signing secret, GitHub webhook secret)."""
    return aad_for(environment_id, "integrations", integration_id, "provider_events_secret")


def registration_token_aad(environment_id: str, integration_id: str) -> bytes:
    return aad_for(environment_id, "integrations", integration_id, "registration_access_token")


def integration_view(rec: IntegrationRecord, rt: Runtime) -> dict[str, Any]:
    mode = rt.catalog.get(rec.provider).auth_mode if rec.provider in rt.catalog else None
    view = {
        "id": rec.id,
        "provider": rec.provider,
        "auth_mode": mode,
        "display_name": rec.display_name,
        "client_id": rec.client_id or None,
        "client_secret_set": rec.client_secret_ct is not None,
        "scopes": list(rec.scopes),
        "return_urls": list(rec.return_urls),
        "authorization_params": rec.authorization_params,
        "token_params": rec.token_params or {},
        "issuer": rec.issuer,
        "endpoints": rec.endpoints,
        "api_base_url": rec.api_base_url,
        "settings": rec.settings,
        "token_export": rec.token_export,
        "connect_page": rec.connect_page,
        "provider_events_secret_set": rec.provider_events_secret_ct is not None,
        "health_probe_interval": rec.health_probe_interval,
        "client_access": rec.client_access,
        "stamp": rec.stamp,
        "verify_request": rec.verify_request,
        "app_id": rec.app_id,
        "private_key_set": rec.private_key_ct is not None,
        "callback_url": rt.settings.callback_url,
        "status": "failing" if rec.failure_code else "ok",
        "failure": {
            "code": rec.failure_code,
            "description": rec.failure_description,
            "at": iso(rec.failed_at),
            "retry_at": iso(rec.retry_at),
        }
        if rec.failure_code
        else None,
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
    }
    mcp = mcp_kind.view(rec)
    if mcp is not None:
        view["server_url"] = mcp.pop("server_url")
        view["mcp"] = mcp
    return view


def _mcp_server_url(spec: ProviderSpec, body: IntegrationInput) -> str:
    url = body.server_url or spec.mcp_server_url
    if not url:
        raise InvalidInput("an mcp integration needs 'server_url' (the MCP server's endpoint)")
    return url


async def prepare_mcp(
    rt: Runtime, environment_id: str, integration_id: str, body: IntegrationInput
) -> mcp_kind.McpSetup | None:
    """Discovery and registration for an ``mcp`` integration (None for other providers).

    Network calls only: run it before opening the transaction that stores the result.
    """
    spec = rt.catalog.get(body.provider)
    if not mcp_kind.is_mcp(spec.auth_mode):
        return None
    server_url = _mcp_server_url(spec, body)
    for url in body.return_urls:
        validate_return_url(url, allow_private=rt.settings.allow_private_networks)
    async with reading(rt.engine) as conn:
        existing = await store.get(conn, environment_id, integration_id)
    return await mcp_kind.prepare(
        rt,
        server_url,
        client_id=body.client_id,
        client_secret=body.client_secret,
        existing=existing,
    )


async def _put_mcp(
    conn: AsyncConnection,
    rt: Runtime,
    environment_id: str,
    integration_id: str,
    body: IntegrationInput,
    setup: mcp_kind.McpSetup | None,
) -> tuple[IntegrationRecord, bool]:
    spec = rt.catalog.get(body.provider)
    if body.issuer or body.endpoints is not None or body.api_base_url:
        raise InvalidInput(
            "an mcp integration finds its authorization server and endpoints itself: "
            "give server_url, not issuer, endpoints or api_base_url"
        )
    spec.resolve(body.settings)
    if setup is None:
        setup = await prepare_mcp(rt, environment_id, integration_id, body)
        assert setup is not None
    if setup.discovery.server_url != _mcp_server_url(spec, body):
        raise InvalidInput("server_url changed while the integration was being prepared")
    existing = await store.get(conn, environment_id, integration_id)
    secret_ct: bytes | None = None
    token_ct: bytes | None = None
    if setup.reuse_secrets and existing is not None:
        secret_ct, token_ct = existing.client_secret_ct, existing.registration_token_ct
    else:
        if setup.client_secret is not None:
            secret_ct = rt.vault.seal(
                setup.client_secret, secret_aad(environment_id, integration_id)
            )
        if setup.registration_access_token is not None:
            token_ct = rt.vault.seal(
                setup.registration_access_token,
                registration_token_aad(environment_id, integration_id),
            )
    events_secret_ct: bytes | None = existing.provider_events_secret_ct if existing else None
    if body.provider_events_secret is not None:
        events_secret_ct = rt.vault.seal(
            body.provider_events_secret, events_secret_aad(environment_id, integration_id)
        )
    values: dict[str, Any] = {
        "provider": body.provider,
        "display_name": body.display_name,
        "client_secret_ct": secret_ct,
        "registration_token_ct": token_ct,
        "provider_events_secret_ct": events_secret_ct,
        "health_probe_interval": body.health_probe_interval,
        "scopes": list(body.scopes),
        "return_urls": list(body.return_urls),
        "authorization_params": dict(body.authorization_params),
        "settings": dict(body.settings),
        "token_export": body.token_export,
        "connect_page": body.connect_page,
        "client_access": body.client_access,
        **setup.record_values(),
    }
    created = await store.upsert(conn, environment_id, integration_id, values, rt.clock.now())
    if body.health_probe_interval is None and existing is not None:
        await signal_store.stop_probes(conn, environment_id, integration_id)
    rec = await store.get(conn, environment_id, integration_id)
    assert rec is not None
    return rec, created


async def put_integration(
    conn: AsyncConnection,
    rt: Runtime,
    environment_id: str,
    integration_id: str,
    body: IntegrationInput,
    *,
    mcp_setup: mcp_kind.McpSetup | None = None,
) -> tuple[IntegrationRecord, bool]:
    """Create or replace; the client secret is write-only (omitted on update = keep it).

    ``mcp_setup``: the result of ``prepare_mcp`` for an ``mcp`` integration (done here,
    inside the caller's transaction, when not given).
    """
    spec = rt.catalog.get(body.provider)
    allow = rt.settings.allow_private_networks
    mode = spec.auth_mode
    for url in body.return_urls:
        validate_return_url(url, allow_private=allow)
    if mode in CODE_MODES and not body.return_urls:
        raise InvalidInput("return_urls needs at least one URL")
    if mcp_kind.is_mcp(spec.auth_mode):
        return await _put_mcp(conn, rt, environment_id, integration_id, body, mcp_setup)
    if body.server_url is not None:
        raise InvalidInput("server_url is only for mcp integrations")
    if mode not in _SUPPORTED_MODES:
        raise InvalidInput(
            f"provider {spec.name!r} uses auth mode {mode!r}, which is not supported yet"
        )
    code_flow = mode in ("oauth2", "oidc")
    if code_flow or mode == "oauth1":
        if not body.client_id:
            raise InvalidInput(f"client_id is required for auth mode {mode!r}")
    if spec.name == "oidc" or (spec.discovery and not spec.issuer):
        if not body.issuer:
            raise InvalidInput(
                "this provider needs an 'issuer' (OpenID discovery is used to find its endpoints)"
            )
    _check_endpoints(spec, body)
    if body.issuer:
        check_url(body.issuer, allow_private=allow, what="issuer")
    if body.endpoints is not None:
        for name in (
            "authorization_url",
            "token_url",
            "revocation_url",
            "userinfo_url",
            "request_token_url",
            "access_token_url",
        ):
            value = getattr(body.endpoints, name)
            if value:
                check_url(value, allow_private=allow, what=name)
    if body.api_base_url:
        check_url(body.api_base_url, allow_private=allow, what="api_base_url")
    if body.stamp is not None:
        problem = stamp_problem(mode, spec.fields(), body.stamp)
        if problem:
            raise InvalidInput(f"stamp: {problem}")
    if (body.stamp is not None or body.verify_request is not None) and code_flow:
        if body.verify_request is not None:
            raise InvalidInput("verify_request applies to credential kinds, not the code flow")
    base = body.api_base_url or spec.resolve(body.settings).api_base_url
    if body.verify_request is not None and not base:
        raise InvalidInput("verify_request needs an api_base_url")
    spec.resolve(body.settings)  # raises InvalidProviderSettings naming the setting

    existing = await store.get(conn, environment_id, integration_id)
    secret_ct: bytes | None
    if body.client_secret is not None:
        secret_ct = rt.vault.seal(body.client_secret, secret_aad(environment_id, integration_id))
    elif existing is not None and existing.provider == body.provider:
        secret_ct = existing.client_secret_ct
    else:
        secret_ct = None
    events_secret_ct: bytes | None
    if body.provider_events_secret is not None:
        events_secret_ct = rt.vault.seal(
            body.provider_events_secret, events_secret_aad(environment_id, integration_id)
        )
    elif existing is not None:
        events_secret_ct = existing.provider_events_secret_ct
    else:
        events_secret_ct = None
    method = body.endpoints.token_endpoint_auth_method if body.endpoints else None
    if (
        secret_ct is None
        and (code_flow or mode == "oauth1")
        and (method or spec.token_endpoint_auth_method) != "none"
    ):
        raise InvalidInput("client_secret is required for this provider")
    key_ct: bytes | None = None
    if mode == "github_app":
        if not body.app_id:
            raise InvalidInput("a GitHub App integration needs app_id")
        if body.private_key is not None:
            from grantkeeper.kinds.jwt_bearer import load_private_key

            load_private_key(body.private_key)
            key_ct = rt.vault.seal(
                body.private_key, private_key_aad(environment_id, integration_id)
            )
        elif existing is not None and existing.provider == body.provider:
            key_ct = existing.private_key_ct
        if key_ct is None:
            raise InvalidInput("a GitHub App integration needs private_key (PEM)")
    elif body.private_key is not None or body.app_id is not None:
        raise InvalidInput("app_id and private_key apply to github_app integrations only")
    values = {
        "provider": body.provider,
        "display_name": body.display_name,
        "client_id": body.client_id or "",
        "client_secret_ct": secret_ct,
        "scopes": list(body.scopes),
        "return_urls": list(body.return_urls),
        "authorization_params": dict(body.authorization_params),
        "token_params": dict(body.token_params) or None,
        "issuer": body.issuer,
        "endpoints": body.endpoints.model_dump(exclude_none=True) if body.endpoints else None,
        "settings": dict(body.settings),
        "api_base_url": body.api_base_url,
        "token_export": body.token_export,
        "connect_page": body.connect_page,
        "provider_events_secret_ct": events_secret_ct,
        "health_probe_interval": body.health_probe_interval,
        "mcp": None,
        "registration_token_ct": None,
        "client_access": body.client_access,
        "stamp": body.stamp.model_dump(by_alias=True, exclude_none=True) if body.stamp else None,
        "verify_request": body.verify_request.model_dump() if body.verify_request else None,
        "app_id": body.app_id,
        "private_key_ct": key_ct,
        # a changed configuration is tried at once, not after the failure backoff
        "retry_at": None,
    }
    created = await store.upsert(conn, environment_id, integration_id, values, rt.clock.now())
    if body.health_probe_interval is None and existing is not None:
        await signal_store.stop_probes(conn, environment_id, integration_id)
    rec = await store.get(conn, environment_id, integration_id)
    assert rec is not None
    return rec, created


#: kinds an integration may use today (``mcp`` integrations go through ``_put_mcp``)
_SUPPORTED_MODES = frozenset(
    {
        "oauth2",
        "oidc",
        "api_key",
        "basic",
        "client_credentials",
        "jwt_bearer",
        "oauth1",
        "github_app",
    }
)


def _check_endpoints(spec: ProviderSpec, body: IntegrationInput) -> None:
    """The endpoints a generic entry of each kind needs on the integration."""
    if not spec.is_generic:
        return
    ep = body.endpoints
    need: tuple[str, ...] = ()
    if spec.name == "oauth2":
        need = ("authorization_url", "token_url")
    elif spec.name in ("client_credentials", "jwt_bearer"):
        need = ("token_url",)
    elif spec.name == "oauth1":
        need = ("request_token_url", "authorization_url", "access_token_url")
    missing = [n for n in need if ep is None or not getattr(ep, n)]
    if missing:
        raise InvalidInput(
            f"the generic {spec.name} provider needs 'endpoints' with {', '.join(missing)}"
        )


@dataclass(frozen=True, slots=True)
class ResolvedIntegration:
    """An integration with its endpoints filled in and its client secret opened."""

    record: IntegrationRecord
    spec: ProviderSpec
    client: ClientCredentials
    authorization_url: str
    token_url: str
    revocation_url: str | None
    userinfo_url: str | None
    jwks_uri: str | None
    issuer: str | None
    api_base_url: str | None
    #: the provider advertises RFC 9207 ``iss`` in authorization responses
    iss_parameter_supported: bool
    is_oidc: bool
    #: RFC 8707 resource indicator sent on every authorization and token request (MCP)
    resource: str | None = None

    @property
    def pkce(self) -> bool:
        return self.spec.pkce


async def get_or_404(
    conn: AsyncConnection, environment_id: str, integration_id: str
) -> IntegrationRecord:
    rec = await store.get(conn, environment_id, integration_id)
    if rec is None:
        raise NotFound("no such integration")
    return rec


async def resolve(rt: Runtime, rec: IntegrationRecord) -> ResolvedIntegration:
    spec = rt.catalog.get(rec.provider)
    ep = spec.resolve(rec.settings)
    overrides = rec.endpoints or {}
    issuer = rec.issuer or ep.issuer
    authz, token = (
        overrides.get("authorization_url") or ep.authorization_url,
        overrides.get("token_url") or ep.token_url,
    )
    revocation = overrides.get("revocation_url") or ep.revocation_url
    userinfo = overrides.get("userinfo_url") or ep.userinfo_url
    jwks = ep.jwks_uri
    mcp = rec.mcp or {}
    iss_supported = bool(mcp.get("iss_parameter_supported"))
    is_oidc = spec.auth_mode == "oidc"
    if issuer and (spec.discovery or spec.name == "oidc" or (is_oidc and not (authz and token))):
        meta = await rt.discovery.metadata(issuer)
        authz = authz or meta.authorization_endpoint
        token = token or meta.token_endpoint
        revocation = revocation or meta.revocation_endpoint
        userinfo = userinfo or meta.userinfo_endpoint
        jwks = jwks or meta.jwks_uri
        iss_supported = meta.iss_parameter_supported
    if not authz or not token:
        raise InvalidInput("the integration has no authorization or token endpoint")
    secret = (
        rt.vault.open_str(rec.client_secret_ct, secret_aad(rec.environment_id, rec.id))
        if rec.client_secret_ct is not None
        else None
    )
    method = overrides.get("token_endpoint_auth_method") or (
        "client_secret_basic"
        if spec.name in ("oidc", "oauth2")
        else spec.token_endpoint_auth_method
    )
    return ResolvedIntegration(
        record=rec,
        spec=spec,
        client=ClientCredentials(rec.client_id, secret, method),
        authorization_url=authz,
        token_url=token,
        revocation_url=revocation,
        userinfo_url=userinfo,
        jwks_uri=jwks,
        issuer=issuer if is_oidc or rec.issuer else None,
        api_base_url=rec.api_base_url or ep.api_base_url,
        iss_parameter_supported=iss_supported,
        is_oidc=is_oidc and issuer is not None,
        resource=mcp.get("server_url"),
    )
