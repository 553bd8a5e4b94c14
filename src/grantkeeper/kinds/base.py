"""The one small interface every credential kind implements, and what kinds share.

A kind answers five questions about a grant (CONTRACT "Credential kinds"):

* what it stores: :meth:`Kind.parse` turns the API's ``credentials`` object into the
  secret material sealed on the grant (:class:`Credentials`);
* how it is verified: :meth:`Kind.verify` proves the material at the provider
  (the entry's ``verify_request`` or minting a token) or raises ``CredentialsRejected``;
* how an access token is minted: :meth:`Kind.mint` (kinds with ``mints``);
* how it is stamped on an API call: :meth:`Kind.stamp`;
* how it is revoked: :meth:`Kind.revoke`.

Kinds do their own outgoing HTTP over the process's guarded aiohttp session (token
endpoint calls over its lean HTTP/1.1 client, ``KindContext.token_http``); they never
import the HTTP layer, and the HTTP layer only ever calls these methods.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import aiohttp
import orjson

from grantkeeper.errors import CredentialsRejected, InvalidInput, ProviderUnavailable
from grantkeeper.netguard import check_url
from grantkeeper.oauth.http1 import Http1Client
from grantkeeper.oauth.tokens import ClientCredentials, TokenSet
from grantkeeper.providers.catalog import (
    CredentialField,
    ProviderSpec,
    StampSpec,
    VerifyRequest,
    fill,
)
from grantkeeper.proxy.paths import join_url, with_query_param
from grantkeeper.store.records import IntegrationRecord

__all__ = [
    "Credentials",
    "Kind",
    "KindConfig",
    "KindContext",
    "Outcome",
    "Stamp",
    "basic_header",
    "check_fields",
    "http_json",
    "render_stamp",
    "run_verify_request",
    "verify_status",
    "verify_url",
]

Outcome = Literal["succeeded", "failed", "unsupported"]


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A grant's secret material (sealed as one JSON object). ``repr`` shows only names."""

    values: dict[str, str]

    def __repr__(self) -> str:
        return f"Credentials(fields={sorted(self.values)!r})"

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def secrets(self) -> list[str]:
        return [v for v in self.values.values() if v]


@dataclass(frozen=True, slots=True)
class KindConfig:
    """One integration of a non-code kind, resolved: the entry, the integration's overrides."""

    record: IntegrationRecord
    spec: ProviderSpec
    mode: str
    fields: tuple[CredentialField, ...]
    stamp: StampSpec
    verify_request: VerifyRequest | None
    api_base_url: str | None
    token_url: str | None
    authorization_url: str | None
    request_token_url: str | None
    access_token_url: str | None
    revocation_url: str | None
    #: the integration's own client (client_credentials without per-customer client, oauth1
    #: consumer key/secret); None when the integration has none
    client: ClientCredentials | None
    scopes: tuple[str, ...]
    app_id: str | None = None
    private_key: str | None = field(default=None, repr=False)
    #: extra token-request parameters: the entry's, then the integration's (minting kinds)
    token_params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KindContext:
    """What a kind may use to talk to the provider."""

    http: aiohttp.ClientSession
    #: token endpoint calls (``oauth.tokens``): the lean keep-alive client
    token_http: Http1Client
    timeout: float
    allow_private: bool
    now: Callable[[], float] = time.time


@dataclass(frozen=True, slots=True, repr=False)
class Stamp:
    """Headers to set and query parameters to add on one upstream call."""

    headers: dict[str, str] = field(default_factory=dict)
    query: tuple[tuple[str, str], ...] = ()
    #: values that must never come back to the caller (response headers are scrubbed)
    secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Stamp(headers={sorted(self.headers)!r}, query={[k for k, _ in self.query]!r})"

    def apply_query(self, query: str) -> str:
        for name, value in self.query:
            query = with_query_param(query, name, value)
        return query


def basic_header(userpass: str) -> str:
    return "Basic " + base64.b64encode(userpass.encode()).decode()


def render_stamp(spec: StampSpec, mode: str, values: Mapping[str, str]) -> Stamp:
    """The stamp of ``values`` as ``spec`` says (placeholders missing from ``values`` are empty)."""
    filled = {k: values.get(k, "") for k in _names(spec.template_for(mode))}
    rendered = fill(spec.template_for(mode), filled)
    secrets = tuple(v for v in values.values() if v)
    if spec.in_ == "basic":
        return Stamp(headers={"Authorization": basic_header(rendered)}, secrets=secrets)
    if spec.in_ == "query":
        return Stamp(query=((spec.name, rendered),), secrets=secrets)
    return Stamp(headers={spec.name: rendered}, secrets=secrets)


def _names(template: str) -> list[str]:
    from grantkeeper.providers.catalog import placeholders

    return placeholders(template)


def check_fields(
    fields: tuple[CredentialField, ...],
    raw: Mapping[str, Any],
    *,
    extra: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Validate ``raw`` against the entry's fields: strings, required present, patterns, no
    unknown names. Error messages name the field, never its value."""
    known = {f.name for f in fields} | extra
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(f"unknown credential fields {unknown}; expected {sorted(known)}")
    out: dict[str, str] = {}
    for f in fields:
        value = raw.get(f.name)
        if value is None or value == "":
            if f.required:
                raise InvalidInput(f"credentials.{f.name} ({f.label}) is required")
            continue
        if not isinstance(value, str) or len(value) > 16_000:
            raise InvalidInput(f"credentials.{f.name} must be a string of at most 16000 characters")
        if any(ord(c) < 0x20 and c not in "\n\r\t" or c == "\x7f" for c in value):
            raise InvalidInput(f"credentials.{f.name} must not contain control characters")
        if not f.accepts(value):
            raise InvalidInput(f"credentials.{f.name} ({f.label}) does not have the expected form")
        out[f.name] = value
    return out


async def http_json(
    ctx: KindContext,
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    data: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One call to a provider's API: (status, JSON object body or {}).

    The URL passes the network guard; transport failures, timeouts, 5xx and 429 raise
    ``ProviderUnavailable``. Bodies are never logged.
    """
    check_url(url, allow_private=ctx.allow_private, what="provider URL")
    try:
        async with ctx.http.request(
            method,
            url,
            headers=dict(headers),
            data=dict(data) if data is not None else None,
            timeout=aiohttp.ClientTimeout(total=ctx.timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            raw = await resp.content.read(1_048_576)
    except TimeoutError:
        raise ProviderUnavailable("the provider did not answer in time", retry_after=5) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderUnavailable(
            f"could not reach the provider ({type(exc).__name__})", retry_after=5
        ) from None
    if status >= 500 or status == 429:
        raise ProviderUnavailable(f"the provider answered HTTP {status}", retry_after=5)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {}
    return status, body if isinstance(body, dict) else {}


def verify_url(ctx: KindContext, cfg: KindConfig, vr: VerifyRequest) -> tuple[str, str, str]:
    """(base, path, query) of the verification request under ``api_base_url``."""
    if not cfg.api_base_url:
        raise InvalidInput("verification needs api_base_url on the integration")
    base = check_url(cfg.api_base_url, allow_private=ctx.allow_private, what="api_base_url")
    path, _, query = vr.path.lstrip("/").partition("?")
    return base, path, query


async def run_verify_request(
    ctx: KindContext, cfg: KindConfig, stamp: Stamp, *, secrets: tuple[str, ...] = ()
) -> None:
    """The entry's verification request: 2xx as expected proves the credential.

    401/403 (and any other 4xx) -> ``CredentialsRejected``; 5xx, 429, timeouts ->
    ``ProviderUnavailable``. Nothing of the provider's answer is echoed.
    """
    vr = cfg.verify_request
    if vr is None:
        return
    status = await verify_status(ctx, cfg, vr, stamp)
    if status != vr.expect_status:
        raise CredentialsRejected(
            f"the provider refused the credentials (HTTP {status} from the verification request)"
        )


async def verify_status(ctx: KindContext, cfg: KindConfig, vr: VerifyRequest, stamp: Stamp) -> int:
    """The HTTP status of the verification request carrying ``stamp``; 5xx, 429, timeouts ->
    ``ProviderUnavailable``."""
    base, path, query = verify_url(ctx, cfg, vr)
    url = join_url(base, path, stamp.apply_query(query))
    headers = {"Accept": "application/json", **stamp.headers}
    try:
        async with ctx.http.request(
            vr.method,
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=ctx.timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            await resp.content.read(65_536)
    except TimeoutError:
        raise ProviderUnavailable("the provider did not answer in time", retry_after=5) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderUnavailable(
            f"could not reach the provider ({type(exc).__name__})", retry_after=5
        ) from None
    if status >= 500 or status == 429:
        raise ProviderUnavailable(f"the provider answered HTTP {status}", retry_after=5)
    return status


class Kind:
    """Base of the kinds: defaults for what most kinds do the same way."""

    mode: ClassVar[str]
    #: ``POST /token`` serves this kind (else 409 ``no_access_token``)
    has_access_token: ClassVar[bool] = False
    #: the vault mints access tokens itself (no refresh token, ever)
    mints: ClassVar[bool] = False

    def parse(self, cfg: KindConfig, raw: Mapping[str, Any]) -> Credentials:
        """Validate the API's ``credentials`` object; the result is sealed on the grant."""
        return Credentials(check_fields(cfg.fields, raw))

    def account_id(self, cfg: KindConfig, creds: Credentials) -> str:
        """The provider account the credential belongs to ('' when unknown)."""
        return ""

    def scopes(self, cfg: KindConfig, raw: Mapping[str, Any]) -> tuple[str, ...]:
        return ()

    async def verify(
        self, ctx: KindContext, cfg: KindConfig, creds: Credentials
    ) -> TokenSet | None:
        """Prove the credential; minting kinds return the token they minted doing so."""
        await run_verify_request(ctx, cfg, self.stamp(cfg, creds, None))
        return None

    async def mint(self, ctx: KindContext, cfg: KindConfig, creds: Credentials) -> TokenSet:
        raise NotImplementedError(f"{self.mode} grants have no access token to mint")

    def stamp_values(self, creds: Credentials, access_token: str | None) -> dict[str, str]:
        values = dict(creds.values)
        if access_token is not None:
            values["access_token"] = access_token
        return values

    def stamp(
        self,
        cfg: KindConfig,
        creds: Credentials,
        access_token: str | None,
        *,
        method: str = "GET",
        url: str = "",
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Stamp:
        """How one call to ``url`` carries the credential (``method``, ``url`` and a form
        ``body`` for signing kinds)."""
        return render_stamp(cfg.stamp, self.mode, self.stamp_values(creds, access_token))

    async def probe(
        self, ctx: KindContext, cfg: KindConfig, creds: Credentials, access_token: str | None
    ) -> int | None:
        """The status of the verification request made with this credential (and access
        token, for token kinds), as the proxy would stamp it; None without one. The health
        probe of kinds that have no userinfo endpoint."""
        vr = cfg.verify_request
        if vr is None:
            return None
        base, path, query = verify_url(ctx, cfg, vr)
        stamp = self.stamp(
            cfg, creds, access_token, method=vr.method, url=join_url(base, path, query)
        )
        return await verify_status(ctx, cfg, vr, stamp)

    def credentials_view(self, cfg: KindConfig, creds: Credentials) -> dict[str, Any]:
        """``POST /credentials`` for kinds without an access token."""
        return {
            name: creds.values[name]
            for name in (f.name for f in cfg.fields)
            if name in creds.values
        }

    async def revoke(
        self, ctx: KindContext, cfg: KindConfig, creds: Credentials, access_token: str | None
    ) -> Outcome:
        return "unsupported"
