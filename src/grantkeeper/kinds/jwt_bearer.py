"""``jwt_bearer`` (RFC 7523 section 2.1): a signed assertion exchanged for an access token.

Stored: the private key (PEM), ``issuer``, optional ``key_id`` and ``subject`` (e.g. the
user a Google service account impersonates with domain-wide delegation), sealed. A Google
service account JSON object is accepted as it comes from the console (``client_email`` is
the issuer, ``private_key_id`` the key id); its ``token_uri`` is ignored: the assertion only
ever goes to the integration's token URL. The private key never leaves the vault: it signs
here and is never returned by any endpoint.

The assertion (RFC 7523 3): RS256, or ES256 for a P-256 key; ``iss`` = issuer, ``sub`` =
subject when given (else the issuer), ``aud`` = the token URL unless the catalog entry names
the audience its provider documents, ``iat``, ``exp`` one hour ahead at most (less where the
entry says so), a fresh ``jti``, the entry's fixed claims; ``scope`` both as a claim (Google
reads it there) and as a form parameter (RFC 7521 4.1). Minted like client credentials: on demand and ahead of
expiry, single-flight, never a refresh token.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from grantkeeper.errors import CredentialsRejected, InvalidInput
from grantkeeper.kinds.base import Credentials, Kind, KindConfig, KindContext
from grantkeeper.kinds.client_credentials import scope_of, without_refresh_token
from grantkeeper.oauth.tokens import ClientCredentials, OAuthErrorResponse, TokenSet, token_request
from grantkeeper.providers.quirks import apply_token_response

__all__ = ["GRANT_TYPE", "JwtBearer", "assertion", "load_private_key"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: RFC 7523 3: "a reasonable ... expiration"; the contract caps it at one hour
ASSERTION_LIFETIME = 3600
_STR_FIELDS = ("issuer", "key_id", "subject")


def load_private_key(pem: str) -> RSAKey | ECKey:
    """An RSA (>= 2048 bits) or P-256 private key from PEM; anything else is invalid input."""
    for cls in (RSAKey, ECKey):
        try:
            key = cls.import_key(pem)
        except (JoseError, ValueError, TypeError):
            continue
        if not key.is_private:
            break
        if isinstance(key, ECKey) and key.curve_name != "P-256":
            raise InvalidInput("credentials.private_key: only P-256 EC keys are supported (ES256)")
        if isinstance(key, RSAKey) and key.raw_value.key_size < 2048:
            raise InvalidInput("credentials.private_key: RSA keys need at least 2048 bits")
        return key
    raise InvalidInput("credentials.private_key must be an RSA or EC private key in PEM")


def assertion(
    creds: Credentials,
    audience: str,
    now: float,
    *,
    scope: str | None = None,
    lifetime: int = ASSERTION_LIFETIME,
    extra_claims: Mapping[str, str] | None = None,
) -> str:
    key = load_private_key(creds.values["private_key"])
    alg = "ES256" if isinstance(key, ECKey) else "RS256"
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if creds.values.get("key_id"):
        header["kid"] = creds.values["key_id"]
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": creds.values["issuer"],
        "sub": creds.values.get("subject") or creds.values["issuer"],
        "aud": audience,
        "iat": iat,
        "exp": iat + min(lifetime, ASSERTION_LIFETIME),
        "jti": secrets.token_urlsafe(16),
    }
    for name, value in (extra_claims or {}).items():
        claims.setdefault(name, value)
    if scope:
        claims["scope"] = scope
    return jwt.encode(header, claims, key, algorithms=[alg])


class JwtBearer(Kind):
    mode: ClassVar[str] = "jwt_bearer"
    has_access_token: ClassVar[bool] = True
    mints: ClassVar[bool] = True

    def parse(self, cfg: KindConfig, raw: Mapping[str, Any]) -> Credentials:
        allowed = {"private_key", "issuer", "key_id", "subject", "service_account", "scopes"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise InvalidInput(f"unknown credential fields {unknown}; expected {sorted(allowed)}")
        values: dict[str, str] = {}
        sa = raw.get("service_account")
        if sa is not None:
            if "private_key" in raw or "issuer" in raw:
                raise InvalidInput("give either service_account or private_key and issuer")
            if not isinstance(sa, dict) or sa.get("type") != "service_account":
                raise InvalidInput(
                    "credentials.service_account must be a Google service account JSON object"
                )
            for src, dst in (
                ("private_key", "private_key"),
                ("client_email", "issuer"),
                ("private_key_id", "key_id"),
            ):
                v = sa.get(src)
                if not isinstance(v, str) or not v:
                    raise InvalidInput(f"credentials.service_account.{src} is missing")
                values[dst] = v
        else:
            for name in ("private_key", "issuer"):
                v = raw.get(name)
                if not isinstance(v, str) or not v:
                    raise InvalidInput(f"credentials.{name} is required")
                values[name] = v
            if raw.get("key_id") is not None:
                values["key_id"] = raw["key_id"]
        if raw.get("subject") is not None:
            values["subject"] = raw["subject"]
        for name in _STR_FIELDS:
            v = values.get(name)
            if v is not None and (
                not isinstance(v, str) or len(v) > 1000 or any(ord(c) < 0x20 for c in v)
            ):
                raise InvalidInput(f"credentials.{name} must be a printable string")
        if len(values["private_key"]) > 16_000:
            raise InvalidInput("credentials.private_key is too long")
        load_private_key(values["private_key"])  # fail now, not at the first mint
        scopes = scope_of(raw, cfg.scopes)
        if scopes:
            values["scope"] = " ".join(scopes)
        return Credentials(values)

    def scopes(self, cfg: KindConfig, raw: Mapping[str, Any]) -> tuple[str, ...]:
        return scope_of(raw, cfg.scopes)

    def account_id(self, cfg: KindConfig, creds: Credentials) -> str:
        return (creds.values.get("subject") or creds.values["issuer"])[:255]

    async def mint(self, ctx: KindContext, cfg: KindConfig, creds: Credentials) -> TokenSet:
        if not cfg.token_url:
            raise InvalidInput("the integration has no token_url")
        scope = creds.values.get("scope")
        spec = cfg.spec
        # the entry's documented audience (Salesforce's login host, DocuSign's bare host name),
        # else the token URL (RFC 7523 3)
        audience = spec.assertion_audience(cfg.record.settings) or cfg.token_url
        shape = spec.assertion
        extras = {k: v for k, v in cfg.token_params.items() if k != "scope"}
        params = {
            **extras,  # the entry's and integration's extras; what the vault sets wins
            "grant_type": GRANT_TYPE,
            "assertion": assertion(
                creds,
                audience,
                ctx.now(),
                scope=scope,
                lifetime=(shape.lifetime if shape and shape.lifetime else ASSERTION_LIFETIME),
                extra_claims=shape.claims if shape else None,
            ),
        }
        if scope:
            params["scope"] = scope
        # client authentication only where the integration has a client (RFC 7523 3.1 makes
        # it optional); the assertion itself authenticates the issuer
        client = cfg.client or ClientCredentials("", None, "none")
        if not client.client_id:
            client = _NoClient()
        tokens = await token_request(
            ctx.token_http,
            cfg.token_url,
            client,
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
            raise CredentialsRejected(f"the provider refused the assertion ({exc.error})") from None


class _NoClient(ClientCredentials):
    """No client authentication at all (not even ``client_id`` in the form)."""

    def __init__(self) -> None:
        super().__init__("", None, "none")

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        return None
