"""The OAuth dance: connect sessions, the authorization redirect and the callback.

Defences (SECURITY.md C1-C6): ``state`` is 256 random bits, stored only as a
hash, single-use (a conditional UPDATE claims it), expiring, and bound to the
session (hence environment and integration); PKCE S256 always (unless the
catalog says the provider rejects it); a per-flow ``nonce`` for OpenID
providers; the expected issuer is stored per flow and ``iss`` compared
exactly (RFC 9207); ``return_to`` is matched against the allowlist before the
user is ever sent to the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper import audit
from grantkeeper.apikeys import Principal
from grantkeeper.clock import iso
from grantkeeper.errors import (
    CodeExchangeFailed,
    Conflict,
    InvalidIdToken,
    InvalidInput,
    InvalidState,
    IssuerMismatch,
    NotFound,
    ProviderUnavailable,
    TokenExportDisabled,
    TokensAlreadyRetrieved,
)
from grantkeeper.grants import get_visible, save_connected
from grantkeeper.inputs import RESERVED_AUTHORIZATION_PARAMS, CreateConnectSession
from grantkeeper.integrations import ResolvedIntegration, get_or_404, resolve
from grantkeeper.kinds import mcp as mcp_kind
from grantkeeper.oauth.idtoken import validate_id_token
from grantkeeper.oauth.rfc7636 import new_verifier, s256_challenge
from grantkeeper.oauth.tokens import OAuthErrorResponse, TokenSet, token_request
from grantkeeper.oauth.userinfo import fetch_userinfo
from grantkeeper.providers import ProviderSpec
from grantkeeper.providers.quirks import apply_token_response, resolve_account_id
from grantkeeper.returnurls import require_allowed
from grantkeeper.runtime import Runtime
from grantkeeper.store import connect as store
from grantkeeper.store import grants as grant_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import (
    ConnectSessionRecord,
    GrantRecord,
    IntegrationRecord,
)
from grantkeeper.vault import aad_for

__all__ = [
    "BeginResult",
    "CallbackOutcome",
    "begin",
    "complete",
    "create_session",
    "export_tokens",
    "load_session",
    "session_view",
    "with_query",
]

log = logging.getLogger(__name__)

_ERROR_CODE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def _h(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` appended to its query (existing parameters kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


#: a callback still "exchanging" this long after the session expired was interrupted
#: (its process died mid-way): it can never complete
_EXCHANGE_GRACE = 300.0


def session_view(rec: ConnectSessionRecord, now: float | None = None) -> dict[str, Any]:
    status = rec.status if rec.status in ("completed", "failed") else "pending"
    error = rec.error
    if status == "pending" and now is not None and now > rec.expires_at + _EXCHANGE_GRACE:
        # never pending forever: an expired link or an interrupted callback has failed
        status = "failed"
        error = error or ("interrupted" if rec.status == "exchanging" else "expired")
    view: dict[str, Any] = {
        "id": rec.id,
        "integration_id": rec.integration_id,
        "user_id": rec.user_id,
        "status": status,
        "expires_at": iso(rec.expires_at),
        "created_at": iso(rec.created_at),
    }
    if rec.grant_id:
        view["grant_id"] = rec.grant_id
    if error:
        view["error"] = error
    return view


async def create_session(
    conn: AsyncConnection,
    rt: Runtime,
    principal: Principal,
    body: CreateConnectSession,
    *,
    reconnect_grant_id: str | None = None,
) -> dict[str, Any]:
    principal.require_integration(body.integration_id)
    integ = await get_or_404(conn, principal.environment_id, body.integration_id)
    require_allowed(body.return_to, integ.return_urls)
    now = rt.clock.now()
    session_id = str(uuid.uuid4())
    url_token = secrets.token_urlsafe(32)
    expires_at = now + rt.settings.connect_session_ttl
    await store.insert_session(
        conn,
        {
            "id": session_id,
            "environment_id": principal.environment_id,
            "integration_id": integ.id,
            "user_id": body.user_id,
            "return_to": body.return_to,
            "scopes": list(body.scopes) if body.scopes is not None else None,
            "status": "pending",
            "url_token_hash": _h(url_token),
            "consent": False,
            "reconnect_grant_id": reconnect_grant_id,
            "created_by": principal.key_id,
            "created_at": now,
            "expires_at": expires_at,
            "export_status": "none",
        },
    )
    await audit.record(
        conn,
        environment_id=principal.environment_id,
        actor=principal.actor,
        action="connect_session.created",
        now=now,
        grant_id=reconnect_grant_id,
        integration_id=integ.id,
        session_id=session_id,
    )
    return {
        "id": session_id,
        "connect_url": f"{rt.settings.public_url}/connect/{url_token}",
        "expires_at": iso(expires_at),
    }


async def reconnect_session(
    conn: AsyncConnection, rt: Runtime, principal: Principal, grant_id: str, return_to: str
) -> dict[str, Any]:
    rec = await get_visible(conn, principal.environment_id, grant_id, principal.integration_ids)
    body = CreateConnectSession(
        integration_id=rec.integration_id, user_id=rec.user_id, return_to=return_to
    )
    return await create_session(conn, rt, principal, body, reconnect_grant_id=rec.id)


@dataclass(frozen=True, slots=True)
class BeginResult:
    session: ConnectSessionRecord
    integration: ResolvedIntegration
    authorize_url: str


async def load_for_page(
    rt: Runtime, url_token: str
) -> tuple[ConnectSessionRecord, ResolvedIntegration]:
    """The session behind a connect URL, for the Connect page. Raises InvalidState when unusable."""
    sess, integ = await load_session(rt, url_token)
    return sess, await resolve(rt, integ)


async def load_session(
    rt: Runtime, url_token: str
) -> tuple[ConnectSessionRecord, IntegrationRecord]:
    """The usable session behind a connect URL and its integration (``InvalidState`` if none)."""
    if not url_token or len(url_token) > 100:
        raise InvalidState("this connect link is not valid")
    async with reading(rt.engine) as conn:
        sess = await store.by_url_token(conn, _h(url_token))
        integ = (
            await get_or_404(conn, sess.environment_id, sess.integration_id)
            if sess is not None
            else None
        )
    if sess is None or integ is None:
        raise InvalidState("this connect link is not valid")
    if sess.status in ("completed", "failed", "exchanging"):
        raise InvalidState("this connect link was already used", return_to=sess.return_to)
    if sess.expires_at <= rt.clock.now():
        raise InvalidState("this connect link has expired", return_to=sess.return_to, expired=True)
    return sess, integ


async def begin(rt: Runtime, url_token: str) -> BeginResult:
    """Prepare the authorization request: fresh state, PKCE verifier and nonce; smart consent."""
    sess, resolved = await load_for_page(rt, url_token)
    spec = resolved.spec
    async with reading(rt.engine) as conn:
        consent = await _needs_consent(conn, sess)
    state = secrets.token_urlsafe(32)
    verifier = new_verifier() if resolved.pkce else None
    nonce = secrets.token_urlsafe(24) if resolved.is_oidc else None
    async with rt.engine.begin() as conn:
        ok = False
        for expected in ("pending", "authorizing"):
            # revisiting the link replaces the previous state: only the newest works
            ok = await store.update_session(
                conn,
                sess.id,
                {
                    "status": "authorizing",
                    "state_hash": _h(state),
                    "verifier_ct": (
                        rt.vault.seal(
                            verifier,
                            aad_for(sess.environment_id, "connect_sessions", sess.id, "verifier"),
                        )
                        if verifier
                        else None
                    ),
                    "nonce_hash": _h(nonce) if nonce else None,
                    "expected_issuer": resolved.issuer,
                    "consent": consent,
                },
                expect_status=expected,
            )
            if ok:
                break
        if not ok:
            raise InvalidState("this connect link was already used", return_to=sess.return_to)
    scopes = tuple(sess.scopes) if sess.scopes is not None else tuple(resolved.record.scopes)
    # the catalog's and the integration's extras first, so neither can replace a
    # protocol parameter (rows written before PUT refused reserved names included)
    params: dict[str, str] = dict(spec.authorization_params)
    params.update(
        (k, v)
        for k, v in resolved.record.authorization_params.items()
        if k.lower() not in RESERVED_AUTHORIZATION_PARAMS
    )
    if consent:
        # without it the provider may issue no refresh token (OIDC Core 11)
        params.update(spec.consent_params)
    params.update(
        {
            "response_type": "code",
            "client_id": resolved.client.client_id,
            "redirect_uri": rt.settings.callback_url,
            "state": state,
        }
    )
    params.pop("scope", None)
    scope = spec.scope_string(scopes, offline=spec.refresh.supported)
    if scope:
        params["scope"] = scope
    if resolved.record.mcp:
        # scopes from the server's metadata when none are named; resource (RFC 8707)
        params.update(mcp_kind.authorization_params(resolved.record, scopes, consent=consent))
    if verifier:
        params["code_challenge"] = s256_challenge(verifier)
        params["code_challenge_method"] = "S256"
    if nonce:
        params["nonce"] = nonce
    return BeginResult(
        session=sess,
        integration=resolved,
        authorize_url=with_query(resolved.authorization_url, params),
    )


async def _needs_consent(conn: AsyncConnection, sess: ConnectSessionRecord) -> bool:
    """Ask for consent (so a refresh token is issued) unless a working one is already held
    for the very account this flow re-authorizes.

    Only a reconnect names the account (its grant); a plain connect may end at any
    account of the provider, and a second account connected without consent gets no
    refresh token (OIDC Core 11). When in doubt, prompt.
    """
    if sess.reconnect_grant_id is None:
        return True
    existing = await grant_store.find_for_user(
        conn, sess.environment_id, sess.integration_id, sess.user_id
    )
    return not any(
        g.id == sess.reconnect_grant_id and g.status == "active" and g.refresh_token_ct is not None
        for g in existing
    )


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    redirect_to: str
    session_id: str
    grant_id: str | None


async def complete(rt: Runtime, params: list[tuple[str, str]]) -> CallbackOutcome:
    """Handle ``/oauth/callback``. Raises ``ConnectError`` subclasses for the 400 page."""
    values: dict[str, str] = {}
    for k, v in params:
        if k in values and k in ("state", "code", "iss", "error"):
            raise InvalidState("duplicated parameters in the authorization response")
        values[k] = v
    state = values.get("state")
    if not state or len(state) > 512:
        raise InvalidState()
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        sess = await store.claim_by_state(conn, _h(state), now)
    if sess is None:
        raise InvalidState()
    try:
        return await _complete_claimed(rt, sess, values)
    except (InvalidState, IssuerMismatch, InvalidIdToken) as exc:
        await _fail(rt, sess, exc.code, exc.detail)
        raise


async def _fail(
    rt: Runtime, sess: ConnectSessionRecord, error: str, description: str | None
) -> None:
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        await store.update_session(
            conn,
            sess.id,
            {
                "status": "failed",
                "error": error,
                "error_description": (description or "")[:500] or None,
                "completed_at": now,
                "verifier_ct": None,
            },
        )
        await audit.record(
            conn,
            environment_id=sess.environment_id,
            actor="connect",
            action="connect_session.failed",
            now=now,
            grant_id=sess.reconnect_grant_id,
            integration_id=sess.integration_id,
            session_id=sess.id,
            error=error,
        )


def _error_redirect(sess: ConnectSessionRecord, error: str) -> CallbackOutcome:
    return CallbackOutcome(
        redirect_to=with_query(
            sess.return_to, {"status": "error", "error": error, "connect_session_id": sess.id}
        ),
        session_id=sess.id,
        grant_id=None,
    )


def _clean_error(error: str) -> str:
    e = error.lower()[:64]
    return e if e and set(e) <= _ERROR_CODE_CHARS else "provider_error"


async def _complete_claimed(
    rt: Runtime, sess: ConnectSessionRecord, values: dict[str, str]
) -> CallbackOutcome:
    async with reading(rt.engine) as conn:
        integ = await get_or_404(conn, sess.environment_id, sess.integration_id)
    resolved = await resolve(rt, integ)
    # RFC 9207: compare iss before anything else, error responses included
    iss = values.get("iss")
    if sess.expected_issuer is not None:
        if iss is not None and iss != sess.expected_issuer:
            raise IssuerMismatch()
        if iss is None and resolved.iss_parameter_supported:
            raise IssuerMismatch("the authorization response lacks the iss parameter")
    if "error" in values:
        error = _clean_error(values["error"])
        await _fail(rt, sess, error, None)
        return _error_redirect(sess, error)
    code = values.get("code")
    if not code or len(code) > 4096:
        raise InvalidState("the authorization response has no code")
    verifier = (
        rt.vault.open_str(
            sess.verifier_ct, aad_for(sess.environment_id, "connect_sessions", sess.id, "verifier")
        )
        if sess.verifier_ct
        else None
    )
    spec = resolved.spec
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": rt.settings.callback_url,
        **spec.token_params,
    }
    if resolved.resource:
        form["resource"] = resolved.resource
    if verifier:
        form["code_verifier"] = verifier
    try:
        tokens = await token_request(
            rt.token_http,
            resolved.token_url,
            resolved.client,
            form,
            timeout=rt.settings.http_timeout,
            normalise=lambda body: apply_token_response(spec, body),
        )
    except OAuthErrorResponse as exc:
        error = _clean_error(exc.error)
        await _fail(rt, sess, error, CodeExchangeFailed.title)
        return _error_redirect(sess, error)
    except ProviderUnavailable:
        await _fail(
            rt, sess, "provider_unavailable", "the provider did not answer the code exchange"
        )
        return _error_redirect(sess, "provider_unavailable")

    # the code is redeemed: from here on a failure must end the session with an error
    # (never leave it pending), and a lost race must not lose the tokens
    try:
        claims = await _id_claims(rt, resolved, sess, tokens)
        userinfo = None
        if spec.account_id.source == "userinfo" and resolved.userinfo_url:
            userinfo = await fetch_userinfo(rt, resolved.userinfo_url, tokens.access_token)
    except ProviderUnavailable:
        log.warning(
            "connect session %s: the provider became unreachable after the code was redeemed; "
            "the tokens were not stored",
            sess.id,
        )
        await _fail(
            rt,
            sess,
            "provider_unavailable",
            "the provider could not be reached after the code exchange; connect again",
        )
        return _error_redirect(sess, "provider_unavailable")
    account_id = resolve_account_id(spec, tokens.raw, claims, userinfo) or ""
    requested = tuple(sess.scopes) if sess.scopes is not None else tuple(integ.scopes)
    try:
        grant = await _save_connected(
            rt, sess, integ, spec, tokens, claims, account_id[:255], requested
        )
    except Exception as exc:
        # the type only: driver messages can echo statement parameters
        log.warning(
            "connect session %s: storing the redeemed tokens failed (%s)",
            sess.id,
            type(exc).__name__,
        )
        with contextlib.suppress(Exception):
            await _fail(rt, sess, "server_error", "storing the connection failed; connect again")
        return _error_redirect(sess, "server_error")
    return CallbackOutcome(
        redirect_to=with_query(
            sess.return_to,
            {"grant_id": grant.id, "connect_session_id": sess.id, "status": "success"},
        ),
        session_id=sess.id,
        grant_id=grant.id,
    )


#: attempts at storing a connection that lost a race (same account connected at once,
#: or a refresh of the grant committed meanwhile); each re-reads the grant
_SAVE_ATTEMPTS = 5


async def _save_connected(
    rt: Runtime,
    sess: ConnectSessionRecord,
    integ: IntegrationRecord,
    spec: ProviderSpec,
    tokens: TokenSet,
    claims: dict[str, Any] | None,
    account_id: str,
    requested: tuple[str, ...],
) -> GrantRecord:
    for attempt in range(_SAVE_ATTEMPTS):
        try:
            return await _save_once(rt, sess, integ, spec, tokens, claims, account_id, requested)
        except (IntegrityError, Conflict):
            # another connect of the same account inserted the grant first, or a refresh
            # wrote a newer generation: the next attempt finds it and updates it
            if attempt == _SAVE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _save_once(
    rt: Runtime,
    sess: ConnectSessionRecord,
    integ: IntegrationRecord,
    spec: ProviderSpec,
    tokens: TokenSet,
    claims: dict[str, Any] | None,
    account_id: str,
    requested: tuple[str, ...],
) -> GrantRecord:
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        grant, _event = await save_connected(
            conn,
            rt,
            spec,
            environment_id=sess.environment_id,
            integration_id=sess.integration_id,
            user_id=sess.user_id,
            provider_account_id=account_id,
            tokens=tokens,
            requested_scopes=requested or None,
            id_token_exp=float(claims["exp"]) if claims and "exp" in claims else None,
            actor="connect",
            via="connect",
            prefer_grant_id=sess.reconnect_grant_id,
        )
        update: dict[str, Any] = {
            "status": "completed",
            "grant_id": grant.id,
            "completed_at": now,
            "verifier_ct": None,
        }
        if integ.token_export == "once":
            payload = orjson.dumps(
                {
                    "access_token": tokens.access_token,
                    "refresh_token": tokens.refresh_token,
                    "id_token": tokens.id_token,
                    "token_type": tokens.token_type,
                    "expires_at": iso(grant.access_token_expires_at),
                    "scopes": list(grant.scopes),
                }
            )
            update.update(
                export_ct=rt.vault.seal(
                    payload, aad_for(sess.environment_id, "connect_sessions", sess.id, "export")
                ),
                export_expires_at=now + rt.settings.token_export_ttl,
                export_status="available",
            )
        await store.update_session(conn, sess.id, update)
    return grant


async def _id_claims(
    rt: Runtime, resolved: ResolvedIntegration, sess: ConnectSessionRecord, tokens: TokenSet
) -> dict[str, Any] | None:
    if not resolved.is_oidc:
        return None
    scopes_requested = (
        tuple(sess.scopes) if sess.scopes is not None else tuple(resolved.record.scopes)
    )
    wants_openid = "openid" in (scopes_requested or resolved.spec.default_scopes)
    if tokens.id_token is None:
        if wants_openid:
            raise InvalidIdToken("the provider returned no ID token")
        return None
    if not resolved.jwks_uri or not resolved.issuer:
        raise InvalidIdToken("no JWKS to verify the ID token with")
    jwks_uri = resolved.jwks_uri

    async def jwks(force: bool) -> dict[str, Any]:
        return await rt.discovery.jwks(jwks_uri, force=force)

    issuers: tuple[str, ...] = (resolved.issuer,)
    if any(q.id == "issuer-with-or-without-scheme" for q in resolved.spec.quirks):
        # the provider documents ID tokens whose iss is the bare host (Google)
        issuers += (resolved.issuer.removeprefix("https://"),)
    claims = await validate_id_token(
        tokens.id_token,
        issuers=issuers,
        client_id=resolved.client.client_id,
        nonce=None,
        now=rt.clock.now(),
        jwks=jwks,
    )
    nonce = claims.get("nonce")
    if (
        sess.nonce_hash is None
        or not isinstance(nonce, str)
        or not secrets.compare_digest(_h(nonce), sess.nonce_hash)
    ):
        raise InvalidIdToken("ID token nonce mismatch")
    return claims


async def get_session(
    conn: AsyncConnection, principal: Principal, session_id: str
) -> ConnectSessionRecord:
    try:
        uuid.UUID(session_id)
    except ValueError:
        raise NotFound("no such connect session") from None
    rec = await store.get(conn, principal.environment_id, session_id)
    if rec is None or not principal.may_use_integration(rec.integration_id):
        raise NotFound("no such connect session")
    return rec


async def export_tokens(
    conn: AsyncConnection, rt: Runtime, principal: Principal, session_id: str
) -> dict[str, Any]:
    """The one-time export: readable once, within the export window, then destroyed."""
    rec = await get_session(conn, principal, session_id)
    integ = await get_or_404(conn, principal.environment_id, rec.integration_id)
    if integ.token_export != "once":
        raise TokenExportDisabled()
    now = rt.clock.now()
    if (
        rec.export_status != "available"
        or rec.export_ct is None
        or (rec.export_expires_at or 0) <= now
    ):
        if rec.export_status == "available":
            await store.update_session(
                conn, rec.id, {"export_ct": None, "export_status": "expired"}
            )
        if rec.status != "completed" and rec.export_status == "none":
            raise InvalidInput("the connection is not completed yet")
        raise TokensAlreadyRetrieved()
    claimed = await store.claim_export(conn, rec.id, now)
    if not claimed:
        raise TokensAlreadyRetrieved()
    data = orjson.loads(
        rt.vault.open(
            rec.export_ct, aad_for(rec.environment_id, "connect_sessions", rec.id, "export")
        )
    )
    await audit.record(
        conn,
        environment_id=rec.environment_id,
        actor=principal.actor,
        action="tokens.exported",
        now=now,
        grant_id=rec.grant_id,
        integration_id=rec.integration_id,
        session_id=rec.id,
    )
    return {k: v for k, v in data.items() if v is not None}
