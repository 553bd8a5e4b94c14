"""``client_credentials`` (RFC 6749 section 4.4): an access token for a client, no user.

Stored: a per-customer ``client_id``/``client_secret`` (sealed), or nothing (the
integration's own client), plus the requested scope. Minted on demand and ahead of expiry
by the refresh engine (same lease, same fencing; single-flight across processes). Never a
refresh token (RFC 6749 4.4.3: "A refresh token SHOULD NOT be included"): one that a
provider sends anyway is dropped. Verified by minting a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from grantkeeper.errors import CredentialsRejected, InvalidInput
from grantkeeper.kinds.base import Credentials, Kind, KindConfig, KindContext, check_fields
from grantkeeper.oauth.tokens import ClientCredentials, OAuthErrorResponse, TokenSet, token_request
from grantkeeper.providers.quirks import apply_token_response

__all__ = ["ClientCredentialsKind", "scope_of", "without_refresh_token"]

_SCOPE_KEY = "scope"


def scope_of(raw: Mapping[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    scopes = raw.get("scopes")
    if scopes is None:
        return default
    if not isinstance(scopes, list) or not all(
        isinstance(s, str) and s and len(s) <= 200 and not any(c.isspace() for c in s)
        for s in scopes
    ):
        raise InvalidInput("credentials.scopes must be a list of scope strings")
    return tuple(dict.fromkeys(scopes))


def without_refresh_token(tokens: TokenSet) -> TokenSet:
    """The vault mints again instead of refreshing: never keep a refresh token."""
    return TokenSet(
        access_token=tokens.access_token,
        token_type=tokens.token_type,
        refresh_token=None,
        expires_in=tokens.expires_in,
        scope=tokens.scope,
        id_token=None,
        extra=tokens.extra,
        raw={},
    )


class ClientCredentialsKind(Kind):
    mode: ClassVar[str] = "client_credentials"
    has_access_token: ClassVar[bool] = True
    mints: ClassVar[bool] = True

    def parse(self, cfg: KindConfig, raw: Mapping[str, Any]) -> Credentials:
        values = check_fields(cfg.fields, raw, extra=frozenset({"scopes"}))
        if ("client_id" in values) != ("client_secret" in values):
            raise InvalidInput("give both credentials.client_id and credentials.client_secret")
        if "client_id" not in values and (cfg.client is None or not cfg.client.client_id):
            raise InvalidInput(
                "the integration has no client of its own: give client_id and client_secret"
            )
        scopes = scope_of(raw, cfg.scopes)
        if scopes:
            # the entry's separator: Adobe IMS, for one, takes a comma-separated list
            values[_SCOPE_KEY] = cfg.spec.scope_separator.join(scopes)
        return Credentials(values)

    def scopes(self, cfg: KindConfig, raw: Mapping[str, Any]) -> tuple[str, ...]:
        return scope_of(raw, cfg.scopes)

    def account_id(self, cfg: KindConfig, creds: Credentials) -> str:
        return creds.values.get("client_id", "")

    def client(self, cfg: KindConfig, creds: Credentials) -> ClientCredentials:
        method = cfg.client.auth_method if cfg.client is not None else "client_secret_basic"
        if "client_id" in creds.values:
            return ClientCredentials(
                creds.values["client_id"], creds.values["client_secret"], method
            )
        assert cfg.client is not None
        return cfg.client

    async def mint(self, ctx: KindContext, cfg: KindConfig, creds: Credentials) -> TokenSet:
        if not cfg.token_url:
            raise InvalidInput("the integration has no token_url")
        # the entry's and integration's extras first: what the vault sets wins over them
        extras = {k: v for k, v in cfg.token_params.items() if k != "scope"}
        params = {**extras, "grant_type": "client_credentials"}
        if creds.values.get(_SCOPE_KEY):
            params["scope"] = creds.values[_SCOPE_KEY]
        spec = cfg.spec
        tokens = await token_request(
            ctx.token_http,
            cfg.token_url,
            self.client(cfg, creds),
            params,
            timeout=ctx.timeout,
            normalise=lambda body: apply_token_response(spec, body),
        )
        return without_refresh_token(tokens)

    async def verify(
        self, ctx: KindContext, cfg: KindConfig, creds: Credentials
    ) -> TokenSet | None:
        try:
            return await self.mint(ctx, cfg, creds)
        except OAuthErrorResponse as exc:
            raise CredentialsRejected(
                f"the provider refused the client credentials ({exc.error})"
            ) from None
