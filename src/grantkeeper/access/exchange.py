"""RFC 8693 token exchange: an end user's own provider access token, for a browser or a backend.

``POST /oauth/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``.
The subject (a trusted issuer's JWT or an end-user token) names the user; ``audience``
names the integration. Only that user's own grants are reachable, ``scope`` may only
ask for what the grant holds (RFC 8693 5: downscoping only), and the answer is the
provider access token, refreshed (or, for client-credentials and JWT-bearer grants, minted)
first exactly as ``POST /v1/grants/{id}/token`` does (``refresh.engine.ensure_fresh``:
single flight, ``min_ttl``). Never a refresh token. An integration whose kind has no access
token (``api_key``, ``basic``, ``oauth1``) is ``invalid_target`` before any grant is looked at.

Two callers:

* a browser, without client authentication: only integrations with
  ``client_access: true``, only from an ``Origin`` the environment's subject issuers allow;
* a backend, with ``Authorization: Bearer <api key>`` holding ``credentials:read``: the
  subject must belong to the key's environment and the key may be limited to some
  integrations.

Errors are RFC 6749 section 5.2 JSON (``TokenExchangeError``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from grantkeeper import audit
from grantkeeper.access.subjects import ACCESS_TOKEN_TYPE, JWT_TYPE, Subject, verify_subject_token
from grantkeeper.apikeys import Principal, authenticate
from grantkeeper.credential_grants import grant_kind
from grantkeeper.errors import (
    Conflict,
    Forbidden,
    GrantInvalid,
    GrantkeeperError,
    GrantRevoked,
    InvalidSubjectToken,
    ProviderUnavailable,
    TokenExchangeError,
    Unauthenticated,
)
from grantkeeper.inputs import INTEGRATION_ID
from grantkeeper.ratelimit import take
from grantkeeper.refresh.engine import ensure_fresh, issued
from grantkeeper.runtime import Runtime
from grantkeeper.store import access as access_store
from grantkeeper.store import grants as grant_store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord

__all__ = ["GRANT_TYPE", "ExchangeRequest", "exchange", "parse_request"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
_PARAMS = {
    "grant_type",
    "subject_token",
    "subject_token_type",
    "audience",
    "scope",
    "requested_token_type",
    "login_hint",
    "resource",
    "actor_token",
    "actor_token_type",
    "client_id",
}
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,200}")
_MIN_TTL = 300  # what POST /v1/grants/{id}/token uses when the caller says nothing


def _invalid_request(description: str) -> TokenExchangeError:
    return TokenExchangeError("invalid_request", description)


@dataclass(frozen=True, slots=True, repr=False)
class ExchangeRequest:
    subject_token: str
    subject_token_type: str
    audience: str
    scope: tuple[str, ...] | None
    login_hint: str | None

    def __repr__(self) -> str:  # the subject token is a credential
        return f"ExchangeRequest(audience={self.audience!r}, scope={self.scope!r})"


def parse_request(body: bytes, content_type: str | None) -> ExchangeRequest:
    """The form body (RFC 6749 3.2: form-encoded, every parameter at most once)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise _invalid_request("send application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=30,
        )
    except (UnicodeDecodeError, ValueError):
        raise _invalid_request("the form body is malformed") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise _invalid_request(f"parameter {name[:40]!r} is repeated")
        form[name] = value
    unknown = sorted(set(form) - _PARAMS)
    if unknown:
        raise _invalid_request(f"unknown parameter {unknown[0][:40]!r}")
    if form.get("grant_type") != GRANT_TYPE:
        if "grant_type" not in form:
            raise _invalid_request("grant_type is required")
        raise TokenExchangeError("unsupported_grant_type", f"only {GRANT_TYPE} is supported here")
    if "actor_token" in form or "actor_token_type" in form:
        raise _invalid_request("delegation (actor_token) is not supported")
    if "resource" in form:
        raise TokenExchangeError("invalid_target", "name the integration with 'audience'")
    subject_token = form.get("subject_token", "")
    subject_type = form.get("subject_token_type", "")
    if not subject_token:
        raise _invalid_request("subject_token is required")
    if subject_type not in (JWT_TYPE, ACCESS_TOKEN_TYPE):
        raise _invalid_request(f"subject_token_type must be {JWT_TYPE} or {ACCESS_TOKEN_TYPE}")
    requested = form.get("requested_token_type")
    if requested is not None and requested != ACCESS_TOKEN_TYPE:
        raise _invalid_request(f"requested_token_type may only be {ACCESS_TOKEN_TYPE}")
    audience = form.get("audience", "")
    if not audience:
        raise _invalid_request("audience (the integration id) is required")
    if not re.fullmatch(INTEGRATION_ID, audience):
        raise TokenExchangeError("invalid_target", "unknown integration")
    scope: tuple[str, ...] | None = None
    if "scope" in form:
        parts = form["scope"].split(" ")
        if not all(_SCOPE_TOKEN.fullmatch(p) for p in parts) or len(parts) > 100:
            raise TokenExchangeError("invalid_scope", "scope is malformed")
        scope = tuple(dict.fromkeys(parts))
    hint = form.get("login_hint")
    if hint is not None and not (
        0 < len(hint) <= 255 and all(0x20 <= ord(c) != 0x7F for c in hint)
    ):
        raise _invalid_request("login_hint is malformed")
    return ExchangeRequest(subject_token, subject_type, audience, scope, hint)


async def _client(rt: Runtime, api_key: str | None) -> Principal:
    try:
        async with reading(rt.engine) as conn:
            principal = await authenticate(conn, api_key)
        principal.require("credentials:read")
    except Unauthenticated:
        raise TokenExchangeError(
            "invalid_client", "client authentication failed", status=401
        ) from None
    except Forbidden:
        raise TokenExchangeError(
            "unauthorized_client", "this API key lacks the 'credentials:read' scope"
        ) from None
    return principal


async def _rate_limit(rt: Runtime, subject: Subject) -> None:
    rate = rt.settings.exchange_rate_per_second
    if rate <= 0:
        return
    async with rt.engine.begin() as conn:
        wait = await take(
            conn,
            f"exchange:{subject.bucket}",
            now=rt.clock.now(),
            rate=rate,
            burst=rt.settings.exchange_rate_burst,
        )
    if wait is not None:
        raise TokenExchangeError(
            "slow_down",
            "too many token exchanges for this user; retry later",
            status=429,
            retry_after=max(1, math.ceil(wait)),
        )


def _pick(grants: list[GrantRecord], login_hint: str | None) -> GrantRecord | None:
    if login_hint is not None:
        grants = [g for g in grants if g.provider_account_id == login_hint]
    # several accounts and no hint: the one the user touched last
    return max(grants, key=lambda g: (g.updated_at, g.id)) if grants else None


async def exchange(
    rt: Runtime,
    req: ExchangeRequest,
    *,
    api_key: str | None,
    origin: str | None,
    on_subject: Callable[[set[str]], None] | None = None,
) -> dict[str, Any]:
    """Run one exchange; returns the RFC 8693 response body. ``api_key`` None: browser mode.

    ``on_subject`` receives the subject environment's allowed origins as soon as the
    subject is known (the CORS layer uses them for the answer, errors included).
    """
    principal = await _client(rt, api_key) if api_key is not None else None
    if principal is None and origin is None:
        raise TokenExchangeError(
            "invalid_client",
            "client authentication is required outside a browser (an API key with "
            "credentials:read)",
            status=401,
        )
    try:
        subject = await verify_subject_token(
            rt,
            req.subject_token,
            req.subject_token_type,
            environment_id=principal.environment_id if principal is not None else None,
        )
    except InvalidSubjectToken:
        raise TokenExchangeError(
            "invalid_grant", "the subject token is invalid, expired or not trusted"
        ) from None
    except ProviderUnavailable as exc:
        raise TokenExchangeError(
            "temporarily_unavailable",
            "the subject issuer's keys could not be fetched",
            status=503,
            retry_after=exc.retry_after,
        ) from None
    async with reading(rt.engine) as conn:
        allowed = await access_store.origins(conn, subject.environment_id)
        integ = await integration_store.get(conn, subject.environment_id, req.audience)
    if on_subject is not None:
        on_subject(allowed)
    if principal is None and origin not in allowed:
        raise TokenExchangeError(
            "invalid_client", "this origin may not exchange tokens without an API key", status=401
        )
    await _rate_limit(rt, subject)
    if (
        integ is None
        or not subject.may_use_integration(integ.id)
        or (principal is not None and not principal.may_use_integration(integ.id))
    ):
        raise TokenExchangeError("invalid_target", "unknown integration")
    if principal is None and not integ.client_access:
        raise TokenExchangeError("invalid_target", "this integration does not allow client access")
    if integ.provider in rt.catalog and not grant_kind(rt, integ).has_access_token:
        # api_key, basic, oauth1: the target itself has no access token to hand out (like
        # /token's 409), whether or not this user holds a grant, whatever the scope
        raise TokenExchangeError(
            "invalid_target", "this integration's grants hold credentials, not an access token"
        )
    async with reading(rt.engine) as conn:
        mine, _ = await grant_store.list_grants(
            conn,
            subject.environment_id,
            integration_id=integ.id,
            user_id=subject.user_id,
            limit=200,
        )
    active = [g for g in mine if g.status == "active"]
    rec = _pick(active, req.login_hint)
    if rec is None:
        why = (
            "the user's grant for this integration is no longer valid; reconnect"
            if _pick([g for g in mine if g.status == "invalid"], req.login_hint)
            else "no active grant for this user and integration"
        )
        raise TokenExchangeError("invalid_grant", why)
    if req.scope is not None and not set(req.scope) <= set(rec.scopes):
        raise TokenExchangeError("invalid_scope", "the grant does not hold the requested scope")
    rec = await _fresh(rt, rec)
    token = issued(rt, rec)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        # audited before the caller receives the secret (as the token route does)
        await audit.record(
            conn,
            environment_id=rec.environment_id,
            actor=subject.actor,
            action="token.issued",
            now=now,
            grant_id=rec.id,
            integration_id=rec.integration_id,
            generation=rec.version,
            via="token_exchange",
            subject=subject.via,
            client=principal.actor if principal is not None else "browser",
        )
    rt.metrics.tokens_served.labels(rec.provider).inc()
    body: dict[str, Any] = {
        "access_token": token.access_token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer" if token.token_type.lower() == "bearer" else token.token_type,
        "scope": " ".join(token.scopes),
    }
    if token.expires_at is not None:
        body["expires_in"] = max(int(token.expires_at - now), 0)
    return body


async def _fresh(rt: Runtime, rec: GrantRecord) -> GrantRecord:
    """``ensure_fresh`` as the token route calls it, its errors said the RFC 6749 way."""
    try:
        return await ensure_fresh(rt, rec, min_ttl=_MIN_TTL, force=False)
    except (GrantInvalid, GrantRevoked):
        raise TokenExchangeError(
            "invalid_grant", "the user's grant for this integration is no longer valid; reconnect"
        ) from None
    except Conflict as exc:
        raise TokenExchangeError("invalid_target", exc.detail) from None
    except GrantkeeperError as exc:
        if exc.status < 500 and exc.status != 424:
            raise
        retry = getattr(exc, "retry_after", None)
        raise TokenExchangeError(
            "temporarily_unavailable",
            "the provider is unavailable; retry later",
            status=503,
            retry_after=int(retry) if isinstance(retry, int | float) else 5,
        ) from None
