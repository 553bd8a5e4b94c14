"""Remote MCP servers: from a ``server_url`` alone to a registered OAuth client.

What ``prepare`` does when an ``mcp`` integration is PUT (the MCP authorization
specification's chain, each step checked as its RFC says):

1. Protected resource metadata (RFC 9728): an unauthenticated MCP ``initialize`` POST to
   the server; a 401 whose ``WWW-Authenticate`` Bearer challenge names
   ``resource_metadata`` gives the document's URL, else the well-known URL formed from
   ``server_url`` (section 3.1). Its ``resource`` must be ``server_url`` (section 3.3).
2. Authorization server metadata of the first listed server: RFC 8414, then OpenID
   discovery; its ``issuer`` must be the one listed; every endpoint passes the network
   guard; PKCE S256 must be advertised.
3. Registration, when no ``client_id`` is given: the vault's client ID metadata document
   (a URL under ``GRANTKEEPER_PUBLIC_URL``) when the server advertises
   ``client_id_metadata_document_supported``, else RFC 7591 dynamic registration at its
   ``registration_endpoint``, else ``client_registration_unavailable``. A registration
   is kept across PUTs while the server and its authorization server stay the same
   (tokens are bound to the client that obtained them).

Every fetch goes through ``oauth.fetch`` (network guard, no redirects, bodies read
whole under a cap). Failures name the URL (``mcp_discovery_failed``). Grants, refresh
and the proxy then work as for any authorization-code provider, with
``resource=<server_url>`` (RFC 8707) on every authorization and token request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from grantkeeper.errors import ClientRegistrationUnavailable, McpDiscoveryFailed, UnsafeUrl
from grantkeeper.kinds.authorization_code import AuthorizationCode
from grantkeeper.netguard import check_url
from grantkeeper.oauth import rfc7591, rfc8414, rfc9728
from grantkeeper.oauth.fetch import FetchError, fetch

if TYPE_CHECKING:
    from grantkeeper.config import Settings
    from grantkeeper.runtime import Runtime
    from grantkeeper.store.records import IntegrationRecord

__all__ = [
    "CLIENT_METADATA_PATH",
    "McpDiscovery",
    "McpKind",
    "McpSetup",
    "authorization_params",
    "client_metadata_document",
    "client_metadata_url",
    "discover",
    "is_mcp",
    "prepare",
    "view",
]

#: where the vault serves its client ID metadata document (under GRANTKEEPER_PUBLIC_URL)
CLIENT_METADATA_PATH: Final = "/oauth/client-metadata.json"
CLIENT_NAME: Final = "grantkeeper"
#: the MCP protocol revision announced in the discovery probe
PROTOCOL_VERSION: Final = "2025-06-18"
_OFFLINE: Final = "offline_access"


class McpKind(AuthorizationCode):
    """An MCP server's grants: the authorization-code kind, bound to one resource.

    Stamping, refresh (``refresh.engine``, with ``resource``) and revocation are the
    authorization-code kind's; what is MCP's own is how the integration comes to be
    (``prepare``) and the authorization request's ``resource`` and scopes
    (``authorization_params``).
    """

    mode: ClassVar[str] = "mcp"


def is_mcp(auth_mode: str) -> bool:
    return auth_mode == "mcp"


def client_metadata_url(settings: Settings) -> str:
    return f"{settings.public_url}{CLIENT_METADATA_PATH}"


def client_metadata_document(settings: Settings) -> dict[str, Any]:
    """The vault's client ID metadata document: its ``client_id`` is its own URL."""
    return {
        "client_id": client_metadata_url(settings),
        "client_name": CLIENT_NAME,
        "client_uri": settings.public_url,
        "redirect_uris": [settings.callback_url],
        "grant_types": list(rfc7591.GRANT_TYPES),
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }


@dataclass(frozen=True, slots=True)
class McpDiscovery:
    server_url: str
    resource_metadata_url: str
    resource: rfc9728.ProtectedResourceMetadata
    server: rfc8414.AuthorizationServerMetadata
    #: the ``scope`` of the server's 401 challenge, if it named one
    challenge_scope: tuple[str, ...]


@dataclass(frozen=True, slots=True, repr=False)
class McpSetup:
    """What an MCP integration row gets from discovery and registration (secrets in clear:
    the caller seals them)."""

    discovery: McpDiscovery
    registration: str  # cimd | dcr | static
    client_id: str
    client_secret: str | None
    #: True: keep the stored secret and registration token (an earlier registration)
    reuse_secrets: bool
    auth_method: str
    registration_access_token: str | None
    registration_client_uri: str | None

    def __repr__(self) -> str:
        return f"McpSetup(registration={self.registration!r}, client_id={self.client_id!r})"

    def default_scopes(self) -> list[str]:
        """Scopes asked for when the integration names none (the MCP spec's order: the
        401 challenge's ``scope``, else the resource's ``scopes_supported``)."""
        d = self.discovery
        return list(d.challenge_scope or d.resource.scopes_supported)

    def record_values(self) -> dict[str, Any]:
        """Integration columns (without the sealed secrets)."""
        d = self.discovery
        s = d.server
        endpoints: dict[str, str] = {
            "authorization_url": s.authorization_endpoint,
            "token_url": s.token_endpoint,
            "token_endpoint_auth_method": self.auth_method,
        }
        if s.revocation_endpoint:
            endpoints["revocation_url"] = s.revocation_endpoint
        mcp: dict[str, Any] = {
            "server_url": d.server_url,
            "resource": d.resource.resource,
            "authorization_server": s.issuer,
            "registration": self.registration,
            "resource_metadata_url": d.resource_metadata_url,
            "default_scopes": self.default_scopes(),
            "offline_access": _OFFLINE in s.scopes_supported,
            # OpenID Connect Core 11: offline_access needs prompt=consent
            "prompt_consent": not s.prompt_values_supported
            or "consent" in s.prompt_values_supported,
            "iss_parameter_supported": s.authorization_response_iss_parameter_supported,
        }
        if self.registration_client_uri:
            mcp["registration_client_uri"] = self.registration_client_uri
        return {
            "client_id": self.client_id,
            "issuer": s.issuer,
            "endpoints": endpoints,
            "api_base_url": d.server_url,
            "mcp": mcp,
        }


def view(rec: IntegrationRecord) -> dict[str, Any] | None:
    """The integration's ``mcp`` member (CONTRACT "MCP servers")."""
    m = rec.mcp
    if not m:
        return None
    return {
        "server_url": m.get("server_url"),
        "resource": m.get("resource"),
        "authorization_server": m.get("authorization_server"),
        "registration": m.get("registration"),
        "resource_metadata_url": m.get("resource_metadata_url"),
        "default_scopes": list(m.get("default_scopes") or ()),
    }


def authorization_params(
    rec: IntegrationRecord, scopes: Sequence[str], *, consent: bool
) -> dict[str, str]:
    """``scope``, ``resource`` (RFC 8707) and, to obtain a refresh token from an OpenID
    server, ``offline_access`` with ``prompt=consent`` (OpenID Connect Core 11)."""
    m = rec.mcp or {}
    wanted = list(scopes) or list(m.get("default_scopes") or ())
    params: dict[str, str] = {"resource": str(m["server_url"])}
    if m.get("offline_access") and _OFFLINE not in wanted:
        wanted.append(_OFFLINE)
    if wanted:
        params["scope"] = " ".join(dict.fromkeys(wanted))
    if consent and m.get("offline_access") and m.get("prompt_consent"):
        params["prompt"] = "consent"
    return params


def _fail(detail: str) -> McpDiscoveryFailed:
    return McpDiscoveryFailed(detail[:600])


async def _probe(rt: Runtime, server_url: str) -> tuple[str | None, tuple[str, ...]]:
    """An unauthenticated MCP ``initialize``: the 401's resource_metadata URL and scope."""
    s = rt.settings
    try:
        got = await fetch(
            rt.http,
            server_url,
            allow_private=s.allow_private_networks,
            timeout=s.http_timeout,
            what="server_url",
            method="POST",
            json_body={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": CLIENT_NAME, "version": "1"},
                },
            },
            headers={"Accept": "application/json, text/event-stream"},
            read_body=False,
        )
    except FetchError as exc:
        raise _fail(f"the MCP server {server_url} could not be reached: {exc}") from None
    if got.status != 401:
        return None, ()
    params = rfc9728.bearer_challenge(got.headers.getall("WWW-Authenticate", ())) or {}
    scope = tuple(params.get("scope", "").split())
    return params.get("resource_metadata"), scope


async def _json_document(rt: Runtime, url: str, what: str) -> dict[str, Any]:
    s = rt.settings
    try:
        got = await fetch(
            rt.http, url, allow_private=s.allow_private_networks, timeout=s.http_timeout, what=what
        )
    except FetchError as exc:
        raise _fail(f"the {what} could not be fetched: {exc}") from None
    if got.status != 200:
        raise _fail(f"the {what} at {url} answered HTTP {got.status}")
    if got.body is None:
        raise _fail(f"the {what} at {url} is not a JSON object")
    return got.body


async def _server_metadata(rt: Runtime, issuer: str) -> rfc8414.AuthorizationServerMetadata:
    s = rt.settings
    try:
        check_url(issuer, allow_private=s.allow_private_networks, what="authorization server")
        urls = rfc8414.metadata_urls(issuer)
    except (UnsafeUrl, rfc8414.InvalidServerMetadata) as exc:
        detail = exc.detail if isinstance(exc, UnsafeUrl) else str(exc)
        raise _fail(f"the authorization server {issuer}: {detail}") from None
    tried: list[str] = []
    for url in urls:
        try:
            got = await fetch(
                rt.http,
                url,
                allow_private=s.allow_private_networks,
                timeout=s.http_timeout,
                what="authorization server metadata",
            )
        except FetchError as exc:
            raise _fail(f"the authorization server metadata could not be fetched: {exc}") from None
        if got.status != 200 or got.body is None:
            tried.append(f"{url} (HTTP {got.status})")
            continue
        try:
            return rfc8414.parse_metadata(
                got.body, expected_issuer=issuer, allow_private=s.allow_private_networks
            )
        except rfc8414.InvalidServerMetadata as exc:
            raise _fail(f"the authorization server metadata at {url} is refused: {exc}") from None
    raise _fail(
        f"no authorization server metadata for {issuer} was found; tried " + ", ".join(tried)
    )


async def discover(rt: Runtime, server_url: str) -> McpDiscovery:
    """RFC 9728 then RFC 8414 / OpenID discovery for ``server_url``."""
    allow = rt.settings.allow_private_networks
    try:
        check_url(server_url, allow_private=allow, what="server_url")
    except UnsafeUrl as exc:
        raise _fail(f"server_url {server_url}: {exc.detail}") from None
    if "#" in server_url:
        raise _fail(f"server_url {server_url}: a resource URL has no fragment (RFC 8707)")
    metadata_url, challenge_scope = await _probe(rt, server_url)
    if metadata_url is None:
        metadata_url = rfc9728.well_known_url(server_url)
    doc = await _json_document(rt, metadata_url, "protected resource metadata")
    try:
        resource = rfc9728.parse_metadata(doc, expected_resource=server_url)
    except rfc9728.InvalidResourceMetadata as exc:
        raise _fail(
            f"the protected resource metadata at {metadata_url} is refused: {exc}"
        ) from None
    server = await _server_metadata(rt, resource.authorization_servers[0])
    return McpDiscovery(
        server_url=server_url,
        resource_metadata_url=metadata_url,
        resource=resource,
        server=server,
        challenge_scope=challenge_scope,
    )


def _static_method(server: rfc8414.AuthorizationServerMetadata, has_secret: bool) -> str:
    if not has_secret:
        return "none"
    supported = server.token_endpoint_auth_methods_supported
    if supported and "client_secret_basic" not in supported and "client_secret_post" in supported:
        return "client_secret_post"
    return "client_secret_basic"


async def _register(rt: Runtime, d: McpDiscovery) -> rfc7591.ClientRegistration:
    s = rt.settings
    endpoint = d.server.registration_endpoint
    assert endpoint is not None
    try:
        method = rfc7591.choose_auth_method(d.server.token_endpoint_auth_methods_supported)
    except rfc7591.InvalidRegistration as exc:
        raise ClientRegistrationUnavailable(f"{endpoint}: {exc}") from None
    body = rfc7591.registration_request(
        redirect_uri=s.callback_url,
        auth_method=method,
        client_name=CLIENT_NAME,
        client_uri=s.public_url,
    )
    try:
        got = await fetch(
            rt.http,
            endpoint,
            allow_private=s.allow_private_networks,
            timeout=s.http_timeout,
            what="registration_endpoint",
            method="POST",
            json_body=body,
        )
    except FetchError as exc:
        raise _fail(f"dynamic client registration failed: {exc}") from None
    if got.status not in (200, 201) or got.body is None:
        error = got.body.get("error") if got.body else None
        shown = f" ({error})" if isinstance(error, str) and error.isidentifier() else ""
        raise _fail(f"dynamic client registration at {endpoint} answered HTTP {got.status}{shown}")
    try:
        return rfc7591.parse_response(got.body, requested_method=method)
    except rfc7591.InvalidRegistration as exc:
        raise _fail(f"the registration response of {endpoint} is refused: {exc}") from None


def _reusable(existing: IntegrationRecord | None, d: McpDiscovery) -> str | None:
    """The registration kind of ``existing`` when it can be kept for this discovery."""
    if existing is None or not existing.mcp:
        return None
    m = existing.mcp
    if (
        m.get("server_url") == d.server_url
        and m.get("authorization_server") == d.server.issuer
        and m.get("registration") in ("dcr", "cimd")
    ):
        return str(m["registration"])
    return None


async def prepare(
    rt: Runtime,
    server_url: str,
    *,
    client_id: str | None,
    client_secret: str | None,
    existing: IntegrationRecord | None,
) -> McpSetup:
    """Discover ``server_url``'s authorization and register the vault (or use the given client)."""
    d = await discover(rt, server_url)
    if client_id:
        return McpSetup(
            discovery=d,
            registration="static",
            client_id=client_id,
            client_secret=client_secret,
            reuse_secrets=client_secret is None
            and existing is not None
            and existing.client_id == client_id
            and existing.client_secret_ct is not None,
            auth_method=_static_method(
                d.server,
                client_secret is not None
                or (
                    existing is not None
                    and existing.client_id == client_id
                    and existing.client_secret_ct is not None
                ),
            ),
            registration_access_token=None,
            registration_client_uri=None,
        )
    kept = _reusable(existing, d)
    if kept == "dcr" and existing is not None:
        endpoints: Mapping[str, str] = existing.endpoints or {}
        return McpSetup(
            discovery=d,
            registration="dcr",
            client_id=existing.client_id,
            client_secret=None,
            reuse_secrets=True,
            auth_method=endpoints.get("token_endpoint_auth_method", "client_secret_basic"),
            registration_access_token=None,
            registration_client_uri=(existing.mcp or {}).get("registration_client_uri"),
        )
    if d.server.client_id_metadata_document_supported:
        return McpSetup(
            discovery=d,
            registration="cimd",
            client_id=client_metadata_url(rt.settings),
            client_secret=None,
            reuse_secrets=False,
            auth_method="none",
            registration_access_token=None,
            registration_client_uri=None,
        )
    if d.server.registration_endpoint is None:
        raise ClientRegistrationUnavailable(
            f"the authorization server {d.server.issuer} of {server_url} supports neither "
            "client ID metadata documents nor dynamic client registration: give a client_id"
        )
    reg = await _register(rt, d)
    return McpSetup(
        discovery=d,
        registration="dcr",
        client_id=reg.client_id,
        client_secret=reg.client_secret,
        reuse_secrets=False,
        auth_method=reg.token_endpoint_auth_method,
        registration_access_token=reg.registration_access_token,
        registration_client_uri=reg.registration_client_uri,
    )
