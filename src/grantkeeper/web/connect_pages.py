"""The end user's side of the dance: ``/connect/{token}`` and ``/oauth/callback``.

No API key here: the unguessable connect URL is the capability. Failures that
may be tampering (bad state, issuer mix-up, bad ID token) get a 400 page and
nothing else; a provider error goes back to the app with ``status=error``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from grantkeeper import connect, credential_connect, tracing
from grantkeeper.errors import (
    ConnectError,
    CredentialsRejected,
    GrantkeeperError,
    InvalidInput,
    InvalidState,
    ProviderUnavailable,
)
from grantkeeper.providers.catalog import ProviderSpec
from grantkeeper.runtime import Runtime
from grantkeeper.web.pages import PAGE_HEADERS, Templates

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
_templates = Templates()


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=302, headers=PAGE_HEADERS)


def _error_page(exc: GrantkeeperError, *, back_url: str | None = None) -> Response:
    heading = (
        "This link has expired"
        if exc.extra.get("expired")
        else "The connection could not be completed"
    )
    message = (
        exc.detail
        if isinstance(exc, ConnectError)
        else "Something went wrong while connecting your account."
    )
    return _templates.render(
        "error.html",
        status=exc.status if 400 <= exc.status < 500 else 400,
        heading=heading,
        message=message,
        back_url=back_url,
    )


def _form_page(
    form: credential_connect.CredentialForm,
    url_token: str,
    *,
    values: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    # secrets are never sent back: only non-secret fields keep what the user typed
    kept = {f.name: (values or {}).get(f.name, "") for f in form.fields if not f.secret}
    return _templates.render(
        "credentials_form.html",
        status=status,
        provider_name=form.provider_name,
        app_name=form.app_name,
        fields=form.fields,
        values=kept,
        error=error,
        action=f"/connect/{url_token}",
        cancel_url=form.cancel_url,
        docs_url=form.docs_url,
    )


@router.post("/connect/{url_token}")
async def connect_form_submit(request: Request, url_token: str) -> Response:
    """The Connect form of ``api_key`` and ``basic`` integrations, posted back."""
    rt = _rt(request)
    try:
        form = await credential_connect.form_for(rt, url_token)
        if form is None:
            raise InvalidState("this connect link does not take a form")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise InvalidState("the form must be posted as application/x-www-form-urlencoded")
        data = await request.form(max_files=0, max_fields=50)
        values = {k: v for k, v in data.items() if isinstance(v, str)}
    except InvalidState as exc:
        back = exc.extra.get("return_to")
        return _error_page(exc, back_url=back if isinstance(back, str) else None)
    except GrantkeeperError as exc:
        log.warning("connect form failed: %s", exc.code)
        return _error_page(exc)
    try:
        with tracing.span("grantkeeper.connect.submit"):
            target = await credential_connect.submit(rt, form, values)
    except (InvalidInput, CredentialsRejected) as exc:
        return _form_page(form, url_token, values=values, error=exc.detail, status=422)
    except ProviderUnavailable:
        return _form_page(
            form,
            url_token,
            values=values,
            error=f"{form.provider_name} did not answer; please try again in a moment.",
            status=503,
        )
    except InvalidState as exc:
        back = exc.extra.get("return_to")
        return _error_page(exc, back_url=back if isinstance(back, str) else None)
    except GrantkeeperError as exc:
        log.warning("connect form failed: %s", exc.code)
        return _error_page(exc)
    return RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)


def _names(
    integration_id: str, display_name: str | None, spec: ProviderSpec, issuer: str | None
) -> tuple[str | None, str]:
    """(the app's name or None, the provider's name) for the Connect page.

    A generic entry ("Generic OpenID Connect") means nothing to an end user: there the
    integration's display name names the provider (else the issuer's host), and the app
    goes unnamed rather than being called the same.
    """
    if spec.is_generic:
        host = urlsplit(issuer).hostname if issuer else None
        return None, display_name or host or integration_id
    return display_name or integration_id, spec.display_name


@router.get("/connect/{url_token}")
async def connect_page(request: Request, url_token: str) -> Response:
    rt = _rt(request)
    try:
        form = await credential_connect.form_for(rt, url_token)
        if form is not None:
            return _form_page(form, url_token)
        elsewhere = await credential_connect.redirect_for(rt, url_token)
        if elsewhere is not None:
            return _redirect(elsewhere)
        sess, resolved = await connect.load_for_page(rt, url_token)
        integ = resolved.record
        if integ.connect_page and request.query_params.get("continue") != "1":
            scopes = list(sess.scopes) if sess.scopes is not None else list(integ.scopes)
            spec = resolved.spec
            app_name, provider_name = _names(integ.id, integ.display_name, spec, resolved.issuer)
            return _templates.render(
                "connect.html",
                app_name=app_name,
                provider_name=provider_name,
                # (plain description or None, the scope itself): the words a user understands
                scopes=[(spec.describe_scope(s), s) for s in scopes or spec.default_scopes],
                continue_url=f"/connect/{url_token}",
                cancel_url=connect.with_query(
                    sess.return_to,
                    {"status": "error", "error": "access_denied", "connect_session_id": sess.id},
                ),
            )
        with tracing.span("grantkeeper.connect.begin"):
            result = await connect.begin(rt, url_token)
    except InvalidState as exc:
        back = exc.extra.get("return_to")
        return _error_page(exc, back_url=back if isinstance(back, str) else None)
    except GrantkeeperError as exc:
        log.warning("connect page failed: %s", exc.code)
        return _error_page(exc)
    return _redirect(result.authorize_url)


@router.get("/oauth/callback")
async def oauth_callback(request: Request) -> Response:
    rt = _rt(request)
    qp = request.query_params
    if ("oauth_token" in qp or "denied" in qp) and "state" not in qp and "code" not in qp:
        # RFC 5849 2.2: an OAuth 1.0a provider sending the user back
        try:
            params = list(qp.multi_items())
            if len({k for k, _ in params}) != len(params):
                raise InvalidState("duplicated parameters in the authorization response")
            with tracing.span("grantkeeper.connect.callback", flow="oauth1"):
                return _redirect(await credential_connect.complete_oauth1(rt, dict(params)))
        except GrantkeeperError as exc:
            log.info("oauth1 callback refused: %s", exc.code)
            return _error_page(exc)
    if "installation_id" in request.query_params or "setup_action" in request.query_params:
        # a GitHub App's setup URL: the installation flow, not an authorization response
        try:
            params = list(request.query_params.multi_items())
            if len({k for k, _ in params}) != len(params):
                raise InvalidState("duplicated parameters in the installation response")
            with tracing.span("grantkeeper.connect.callback", flow="installation"):
                return _redirect(await credential_connect.complete_installation(rt, dict(params)))
        except GrantkeeperError as exc:
            log.info("installation callback refused: %s", exc.code)
            return _error_page(exc)
    try:
        with tracing.span("grantkeeper.connect.callback"):
            outcome = await connect.complete(rt, list(request.query_params.multi_items()))
    except ConnectError as exc:
        log.info("oauth callback refused: %s", exc.code)
        return _error_page(exc)
    except GrantkeeperError as exc:
        log.warning("oauth callback failed: %s", exc.code)
        return _error_page(exc)
    return _redirect(outcome.redirect_to)
