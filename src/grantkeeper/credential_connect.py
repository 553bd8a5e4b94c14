"""The Connect page for credential kinds: the end user types an API key or a login.

``GET {connect_url}`` of an ``api_key`` or ``basic`` integration shows a form drawn from
the entry's ``credential_fields``; the form posts back to the same URL (the unguessable
URL stays the capability). The credential is proven at the provider first (the entry's
verification request); a refusal shows the form again with a message, non-secret values
kept and secrets never echoed. On success the session completes and the user goes back to
``return_to`` with ``grant_id``, ``connect_session_id`` and ``status=success``, as for OAuth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from grantkeeper.connect import load_session, with_query
from grantkeeper.credential_grants import save_credentials
from grantkeeper.errors import InvalidState
from grantkeeper.kinds import kind_for
from grantkeeper.kinds.config import context, kind_config
from grantkeeper.providers.catalog import CredentialField
from grantkeeper.runtime import Runtime
from grantkeeper.store import connect as session_store
from grantkeeper.store.records import ConnectSessionRecord, IntegrationRecord

__all__ = ["FORM_MODES", "CredentialForm", "form_for", "submit"]

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
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        # single use: only the first successful submission completes the session
        claimed = await session_store.update_session(
            conn, sess.id, {"status": "exchanging"}, expect_status="pending"
        )
        if not claimed:
            raise InvalidState("this connect link was already used", return_to=sess.return_to)
        grant = await save_credentials(
            conn,
            rt,
            integ,
            kind,
            user_id=sess.user_id,
            provider_account_id=kind.account_id(cfg, creds),
            creds=creds,
            tokens=None,
            scopes=(),
            actor="connect",
            via="connect_form",
        )
        await session_store.update_session(
            conn, sess.id, {"status": "completed", "grant_id": grant.id, "completed_at": now}
        )
    return with_query(
        sess.return_to,
        {"grant_id": grant.id, "connect_session_id": sess.id, "status": "success"},
    )
