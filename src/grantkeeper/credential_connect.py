"""The Connect page for credential kinds: the end user types an API key or a login.

``GET {connect_url}`` of an ``api_key`` or ``basic`` integration shows a form drawn from
the entry's ``credential_fields``; the form posts back to the same URL (the unguessable
URL stays the capability). The credential is proven at the provider first (the entry's
verification request); a refusal shows the form again with a message, non-secret values
kept and secrets never echoed. On success the session completes and the user goes back to
``return_to`` with ``grant_id``, ``connect_session_id`` and ``status=success``, as for OAuth.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper import audit
from grantkeeper.connect import load_session, with_query
from grantkeeper.credential_grants import save_credentials
from grantkeeper.errors import CredentialsRejected, InvalidInput, InvalidState, ProviderUnavailable
from grantkeeper.integrations import get_or_404
from grantkeeper.kinds import kind_for
from grantkeeper.kinds.base import Credentials, KindConfig
from grantkeeper.kinds.config import context, kind_config
from grantkeeper.kinds.github_app import GitHubApp
from grantkeeper.kinds.oauth1 import OAuth1, TemporaryCredentials
from grantkeeper.oauth.tokens import TokenSet
from grantkeeper.providers.catalog import CredentialField
from grantkeeper.runtime import Runtime
from grantkeeper.store import connect as session_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import ConnectSessionRecord, IntegrationRecord
from grantkeeper.vault import aad_for

__all__ = [
    "FORM_MODES",
    "CredentialForm",
    "complete_installation",
    "complete_oauth1",
    "form_for",
    "redirect_for",
    "submit",
]

#: kinds whose grants an end user creates by typing the credential on the Connect page
FORM_MODES = frozenset({"api_key", "basic"})


@dataclass(frozen=True, slots=True)
class CredentialForm:
    session: ConnectSessionRecord
    integration: IntegrationRecord
    provider_name: str
    app_name: str
    fields: tuple[CredentialField, ...]
    docs_url: str
    cancel_url: str


async def form_for(rt: Runtime, url_token: str) -> CredentialForm | None:
    """The form behind a connect URL, or None when the integration uses a redirect flow."""
    sess, integ = await load_session(rt, url_token)
    spec = rt.catalog.get(integ.provider)
    if spec.auth_mode not in FORM_MODES:
        return None
    return CredentialForm(
        session=sess,
        integration=integ,
        provider_name=spec.display_name
        if not spec.is_generic
        else (integ.display_name or integ.id),
        app_name=integ.display_name or integ.id,
        fields=spec.fields(),
        docs_url=spec.docs_url,
        cancel_url=with_query(
            sess.return_to,
            {"status": "error", "error": "access_denied", "connect_session_id": sess.id},
        ),
    )


async def submit(rt: Runtime, form: CredentialForm, values: Mapping[str, str]) -> str:
    """Prove and save what the user typed; returns where to send the user.

    Raises ``InvalidInput`` / ``CredentialsRejected`` (show the form again),
    ``ProviderUnavailable`` (try again later) or ``InvalidState`` (link used meanwhile).
    """
    integ = form.integration
    sess = form.session
    cfg = kind_config(rt, integ)
    kind = kind_for(cfg.mode)
    raw = {f.name: values.get(f.name, "") for f in form.fields}
    creds = kind.parse(cfg, {k: v for k, v in raw.items() if v != ""})
    await kind.verify(context(rt), cfg, creds)
    async with rt.engine.begin() as conn:
        # single use: only the first successful submission completes the session
        claimed = await session_store.update_session(
            conn, sess.id, {"status": "exchanging"}, expect_status="pending"
        )
        if not claimed:
            raise InvalidState("this connect link was already used", return_to=sess.return_to)
        return await _complete(conn, rt, sess, integ, cfg, creds, tokens=None, via="connect_form")


async def _complete(
    conn: AsyncConnection,
    rt: Runtime,
    sess: ConnectSessionRecord,
    integ: IntegrationRecord,
    cfg: KindConfig,
    creds: Credentials,
    *,
    tokens: TokenSet | None,
    via: str,
    also: Mapping[str, object] | None = None,
) -> str:
    """Save the grant, complete the session (plus ``also``), and say where the user goes."""
    kind = kind_for(cfg.mode)
    grant = await save_credentials(
        conn,
        rt,
        integ,
        kind,
        user_id=sess.user_id,
        provider_account_id=kind.account_id(cfg, creds),
        creds=creds,
        tokens=tokens,
        scopes=(),
        actor="connect",
        via=via,
    )
    done = {"status": "completed", "grant_id": grant.id, "completed_at": rt.clock.now()}
    await session_store.update_session(conn, sess.id, {**done, **(also or {})})
    return with_query(
        sess.return_to,
        {"grant_id": grant.id, "connect_session_id": sess.id, "status": "success"},
    )


def _h(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


async def redirect_for(rt: Runtime, url_token: str) -> str | None:
    """Where the connect URL sends the user for redirect kinds other than the code flow
    (a GitHub App's installation page, with a fresh single-use ``state``); None otherwise."""
    sess, integ = await load_session(rt, url_token)
    spec = rt.catalog.get(integ.provider)
    if spec.auth_mode not in ("github_app", "oauth1"):
        return None
    cfg = kind_config(rt, integ)
    if not cfg.authorization_url:
        raise InvalidInput("the integration has no authorization_url")
    values: dict[str, object]
    if spec.auth_mode == "oauth1":
        # RFC 5849 2.1: temporary credentials first; their token is our state, their secret
        # stays sealed in the session until the token request
        kind = kind_for("oauth1")
        assert isinstance(kind, OAuth1)
        temp = await kind.request_token(context(rt), cfg, rt.settings.callback_url)
        state = temp.token
        values = {
            "status": "authorizing",
            "state_hash": _h(state),
            "verifier_ct": rt.vault.seal(temp.secret, _temp_aad(sess)),
        }
        target = with_query(cfg.authorization_url, {"oauth_token": temp.token})
    else:
        if cfg.client is None or not cfg.client.client_secret or not cfg.token_url:
            # without the user's authorization the callback cannot tell whose installation
            # it is (complete_installation): refuse before the user installs anything
            raise InvalidInput(
                "the GitHub App integration needs client_id, client_secret and token_url "
                "for the installation flow"
            )
        state = secrets.token_urlsafe(32)
        values = {"status": "authorizing", "state_hash": _h(state)}
        target = with_query(cfg.authorization_url, {"state": state})
    async with rt.engine.begin() as conn:
        ok = False
        for expected in ("pending", "authorizing"):
            # revisiting the link replaces the previous state: only the newest works
            ok = await session_store.update_session(conn, sess.id, values, expect_status=expected)
            if ok:
                break
    if not ok:
        raise InvalidState("this connect link was already used", return_to=sess.return_to)
    return target


def _temp_aad(sess: ConnectSessionRecord) -> bytes:
    return aad_for(sess.environment_id, "connect_sessions", sess.id, "oauth1_temporary_secret")


async def complete_oauth1(rt: Runtime, params: Mapping[str, str]) -> str:
    """RFC 5849 2.2/2.3: back from the provider with ``oauth_token`` and ``oauth_verifier``
    (or ``denied``); the token request with the verifier, then the grant."""
    token = params.get("oauth_token") or params.get("denied") or ""
    if not token or len(token) > 512:
        raise InvalidState()
    async with rt.engine.begin() as conn:
        sess = await session_store.claim_by_state(conn, _h(token), rt.clock.now())
    if sess is None:
        raise InvalidState()
    if "denied" in params or not params.get("oauth_verifier"):
        return await _fail(rt, sess, "access_denied")
    async with reading(rt.engine) as conn:
        integ = await get_or_404(conn, sess.environment_id, sess.integration_id)
    cfg = kind_config(rt, integ)
    kind = kind_for(cfg.mode)
    if not isinstance(kind, OAuth1) or sess.verifier_ct is None:
        return await _fail(rt, sess, "invalid_request")
    temp = TemporaryCredentials(token, rt.vault.open_str(sess.verifier_ct, _temp_aad(sess)))
    try:
        creds = await kind.access_token(context(rt), cfg, temp, params["oauth_verifier"][:512])
    except CredentialsRejected:
        return await _fail(rt, sess, "access_denied")
    except ProviderUnavailable:
        return await _fail(rt, sess, "provider_unavailable")
    async with rt.engine.begin() as conn:
        return await _complete(
            conn,
            rt,
            sess,
            integ,
            cfg,
            creds,
            tokens=None,
            via="connect",
            also={"verifier_ct": None},
        )


async def _fail(rt: Runtime, sess: ConnectSessionRecord, error: str) -> str:
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        await session_store.update_session(
            conn,
            sess.id,
            {"status": "failed", "error": error, "completed_at": now, "verifier_ct": None},
        )
        await audit.record(
            conn,
            environment_id=sess.environment_id,
            actor="connect",
            action="connect_session.failed",
            now=now,
            integration_id=sess.integration_id,
            session_id=sess.id,
            error=error,
        )
    return with_query(
        sess.return_to, {"status": "error", "error": error, "connect_session_id": sess.id}
    )


async def complete_installation(rt: Runtime, params: Mapping[str, str]) -> str:
    """GitHub's return after an installation: ``installation_id``, ``setup_action``, our
    ``state`` and the ``code`` of the user authorization the app requests during installation.

    The installation must be one the connecting user can access (``GET /user/installations``
    with the user token from ``code``) and one of the app's (app JWT); a first token is
    minted before the grant is saved. Without a ``code`` the installation is refused.
    Raises ``InvalidState`` for an unknown, expired or replayed state (the 400 page);
    provider refusals go back to the app as ``status=error``.
    """
    state = params.get("state") or ""
    if not state or len(state) > 512:
        raise InvalidState()
    async with rt.engine.begin() as conn:
        sess = await session_store.claim_by_state(conn, _h(state), rt.clock.now())
    if sess is None:
        raise InvalidState()
    async with reading(rt.engine) as conn:
        integ = await get_or_404(conn, sess.environment_id, sess.integration_id)
    cfg = kind_config(rt, integ)
    kind = kind_for(cfg.mode)
    if cfg.mode != "github_app":
        return await _fail(rt, sess, "invalid_request")
    if params.get("setup_action") == "request":
        # an organisation owner must approve the installation first
        return await _fail(rt, sess, "installation_pending")
    code = params.get("code") or ""
    if not isinstance(kind, GitHubApp) or not code or len(code) > 512:
        # without the user's authorization nothing says whose installation this is
        return await _fail(rt, sess, "installation_rejected")
    try:
        creds = kind.parse(cfg, {"installation_id": params.get("installation_id", "")})
        await kind.user_can_access(context(rt), cfg, code, creds.values["installation_id"])
        tokens = await kind.verify(context(rt), cfg, creds)
    except (InvalidInput, CredentialsRejected):
        return await _fail(rt, sess, "installation_rejected")
    except ProviderUnavailable:
        return await _fail(rt, sess, "provider_unavailable")
    async with rt.engine.begin() as conn:
        return await _complete(conn, rt, sess, integ, cfg, creds, tokens=tokens, via="connect")
