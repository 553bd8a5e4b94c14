"""The admin UI at ``/ui``: server-rendered, no JavaScript needed, strict CSP.

Sign-in takes an admin API key once (a form POST) and answers with a signed,
expiring session cookie that carries the key's id, never the key; every request
re-reads the key, so revoking it ends the session at once. Every form carries a
CSRF synchronizer token. Actions go through the same domain functions as the
HTTP API, as a ``UiPrincipal`` whose audit actor is ``ui:<key id>``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from grantkeeper import audit, connect
from grantkeeper.apikeys import Principal, authenticate
from grantkeeper.clock import iso
from grantkeeper.errors import GrantkeeperError, InvalidInput, NotFound, Unauthenticated
from grantkeeper.grants import get_visible, grant_view, is_grant_id
from grantkeeper.inputs import (
    INTEGRATION_ID,
    WEBHOOK_EVENTS,
    CreateWebhookEndpoint,
    EndpointsInput,
    IntegrationInput,
)
from grantkeeper.integrations import put_integration
from grantkeeper.kinds.config import open_credentials
from grantkeeper.returnurls import validate_return_url
from grantkeeper.revocation import delete_grant
from grantkeeper.runtime import Runtime
from grantkeeper.store import audit as audit_store
from grantkeeper.store import environments as env_store
from grantkeeper.store import grants as grant_store
from grantkeeper.store import integrations as integ_store
from grantkeeper.store import keys as key_store
from grantkeeper.store import ui_sign_outs as sign_outs
from grantkeeper.store import webhooks as webhook_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord, IntegrationRecord
from grantkeeper.web.pages import PAGE_HEADERS, Templates
from grantkeeper.web.ui_session import CookiePolicy, SessionToken, UiKeys, cookie_policy
from grantkeeper.web.ui_stats import SERIES, grant_counts, refresh_chart
from grantkeeper.webhooks.endpoints import create_endpoint, delete_endpoint

__all__ = ["KINDS", "UiPrincipal", "router"]

log = logging.getLogger(__name__)

GRANT_STATUSES = ("active", "invalid", "revoked")
PAGE_SIZE = 25
_INTEGRATION_ID = re.compile(INTEGRATION_ID)
SIGN_IN_FAILED = "Sign-in failed: the key is unknown, revoked, or not an admin key."
#: what a redirect may announce on the next page (never free text from the query string)
NOTICES = {
    "revoked-succeeded": "The grant was revoked; the provider confirmed the revocation.",
    "revoked-failed": "The grant was revoked here; the provider did not confirm the revocation.",
    "revoked-unsupported": "The grant was revoked here (the provider offers no revocation).",
    "integration-created": "The integration was created.",
    "integration-updated": "The integration was saved.",
    "webhook-deleted": "The webhook endpoint was deleted.",
}


@dataclass(frozen=True, slots=True)
class UiPrincipal(Principal):
    """An admin key acting through the UI: audited as ``ui:<key id>``."""

    @property
    def actor(self) -> str:
        return f"ui:{self.key_id}"


@dataclass(frozen=True, slots=True)
class Ui:
    """One signed-in request: the runtime, who acts, and the CSRF token for its forms."""

    rt: Runtime
    principal: UiPrincipal
    token: SessionToken
    csrf: str
    environment_name: str


class _SignInRequired(Exception):
    pass


class _CsrfRejected(Exception):
    pass


_templates = Templates()


def _dt(value: float | None) -> str:
    text = iso(value)
    return text.replace("T", " ").replace("Z", " UTC") if text else "—"


def _detail(detail: Any) -> str:
    if not isinstance(detail, Mapping) or not detail:
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))


_templates.env.filters["dt"] = _dt
_templates.env.filters["isodt"] = lambda v: iso(v) or ""
_templates.env.filters["detail"] = _detail


# --------------------------------------------------------------------------- plumbing


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _keys(request: Request) -> UiKeys:
    keys: UiKeys | None = getattr(request.app.state, "ui_keys", None)
    if keys is None:
        keys = UiKeys(_rt(request).vault)
        request.app.state.ui_keys = keys
    return keys


def _policy(request: Request) -> CookiePolicy:
    return cookie_policy(_rt(request).settings.public_url)


def _set_cookie(response: Response, policy: CookiePolicy, name: str, value: str, **kw: Any) -> None:
    response.set_cookie(
        name, value, path="/", secure=policy.secure, httponly=True, samesite="strict", **kw
    )


def _clear_cookie(response: Response, policy: CookiePolicy, name: str) -> None:
    response.delete_cookie(name, path="/", secure=policy.secure, httponly=True, samesite="strict")


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)


def _sign_in_redirect(request: Request) -> Response:
    response = _redirect("/ui/sign-in")
    policy = _policy(request)
    if policy.session_name in request.cookies:
        _clear_cookie(response, policy, policy.session_name)
    return response


def _error(request: Request, status: int, heading: str, message: str) -> Response:
    ui: Ui | None = getattr(request.state, "ui", None)
    return _templates.render(
        "admin/error.html", status=status, ui=ui, heading=heading, message=message, nav=""
    )


class _UiRoute(APIRoute):
    """Turns failures into HTML pages (the app's handlers answer problem+json) and slides
    the session's expiry forward."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await inner(request)
            except _SignInRequired:
                return _sign_in_redirect(request)
            except _CsrfRejected:
                return _error(
                    request,
                    403,
                    "The form has expired",
                    "The form could not be verified (missing or stale security token). "
                    "Go back, reload the page and try again.",
                )
            except NotFound as exc:
                return _error(request, 404, "Not found", exc.detail)
            except GrantkeeperError as exc:
                if exc.status >= 500:
                    log.warning("admin UI action failed: %s", exc.code)
                message = exc.detail if exc.status < 500 else "Something went wrong; try again."
                return _error(request, exc.status, exc.title, message)
            except RequestValidationError:
                return _error(request, 400, "Bad request", "The request was not understood.")
            except HTTPException as exc:
                return _error(request, exc.status_code, "Error", "The request failed.")
            renewed: SessionToken | None = getattr(request.state, "ui_renewed", None)
            if renewed is not None and "set-cookie" not in response.headers:
                policy = _policy(request)
                _set_cookie(response, policy, policy.session_name, _keys(request).sign(renewed))
            return response

        return handler


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=_UiRoute)


async def _signed_in(request: Request) -> Ui:
    """The session of this request, re-checked against the API key row; else sign in."""
    rt = _rt(request)
    keys = _keys(request)
    now = rt.clock.now()
    token = keys.verify(request.cookies.get(_policy(request).session_name), now)
    if token is None:
        raise _SignInRequired
    async with reading(rt.engine) as conn:
        if await sign_outs.is_signed_out(conn, token.nonce):
            raise _SignInRequired
        rec = await key_store.get(conn, token.key_id)
        env_name = next(
            (
                name
                for eid, name, _ in await env_store.list_all(conn)
                if eid == token.environment_id
            ),
            token.environment_id,
        )
    if (
        rec is None
        or rec.revoked_at is not None
        or rec.environment_id != token.environment_id
        or "admin" not in rec.scopes
    ):
        raise _SignInRequired
    principal = UiPrincipal(
        key_id=rec.id,
        environment_id=rec.environment_id,
        scopes=frozenset(rec.scopes),
        integration_ids=frozenset(rec.integration_ids) if rec.integration_ids is not None else None,
    )
    if token.needs_reissue(now):
        token = token.renewed(now)
        request.state.ui_renewed = token
    ui = Ui(rt, principal, token, keys.csrf_token(token.nonce), env_name)
    request.state.ui = ui
    return ui


async def _form(request: Request, ui: Ui) -> FormData:
    """The POSTed form, after its CSRF token and (when sent) its Origin were checked."""
    _check_origin(request, ui.rt)
    form = await request.form(max_files=0, max_fields=200)
    presented = form.get("csrf")
    if not _keys(request).csrf_ok(
        ui.token.nonce, presented if isinstance(presented, str) else None
    ):
        raise _CsrfRejected
    return form


def _check_origin(request: Request, rt: Runtime) -> None:
    """Defence in depth behind the CSRF token: refuse POSTs a browser marks as cross-site.

    Our pages send ``Referrer-Policy: no-referrer``, under which browsers send
    ``Origin: null`` even for same-origin forms, so ``Sec-Fetch-Site`` (when sent)
    is the better signal; a real foreign ``Origin`` is refused too.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise _CsrfRejected
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    own = {rt.settings.public_url.lower()}
    host = request.headers.get("host")
    if host:
        own.add(f"{request.url.scheme}://{host}".lower())
    if origin.lower() not in own:
        raise _CsrfRejected


def _text(form: FormData, name: str, max_len: int = 4000) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value.strip()[:max_len]


def _page(ui: Ui, name: str, nav: str, status: int = 200, **ctx: Any) -> Response:
    return _templates.render(name, status=status, ui=ui, nav=nav, **ctx)


def _notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("notice", ""))


# --------------------------------------------------------------------------- sign-in


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    if request.cookies.get(_policy(request).session_name):
        try:
            await _signed_in(request)
            return _redirect("/ui")
        except _SignInRequired:
            pass
    return _sign_in_form(request, status=200, error=None)


def _sign_in_form(request: Request, *, status: int, error: str | None) -> Response:
    policy = _policy(request)
    pre = request.cookies.get(policy.pre_name)
    if not pre or len(pre) > 100:
        pre = secrets.token_urlsafe(18)
    response = _templates.render(
        "admin/sign_in.html",
        status=status,
        ui=None,
        nav="",
        csrf=_keys(request).csrf_token("pre|" + pre),
        error=error,
        # Secure cookies are never sent over plain http: say why sign-in cannot stick
        insecure_warning=policy.secure and _rt(request).settings.public_url.startswith("http:"),
    )
    _set_cookie(response, policy, policy.pre_name, pre, max_age=3600)
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    rt = _rt(request)
    policy = _policy(request)
    keys = _keys(request)
    _check_origin(request, rt)
    form = await request.form(max_files=0, max_fields=20)
    pre = request.cookies.get(policy.pre_name)
    presented = form.get("csrf")
    if not pre or not keys.csrf_ok("pre|" + pre, presented if isinstance(presented, str) else None):
        raise _CsrfRejected
    raw = form.get("api_key")
    raw_key = raw.strip() if isinstance(raw, str) else ""
    try:
        async with reading(rt.engine) as conn:
            principal = await authenticate(conn, raw_key)
        if "admin" not in principal.scopes:
            raise Unauthenticated()
    except Unauthenticated:
        log.info("admin UI sign-in refused")
        return _sign_in_form(request, status=401, error=SIGN_IN_FAILED)
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=f"ui:{principal.key_id}",
            action="ui.signed_in",
            now=now,
        )
    token = keys.new_session(principal.key_id, principal.environment_id, now)
    response = _redirect("/ui")
    _set_cookie(response, policy, policy.session_name, keys.sign(token))
    _clear_cookie(response, policy, policy.pre_name)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    ui = await _signed_in(request)
    await _form(request, ui)
    now = ui.rt.clock.now()
    async with ui.rt.engine.begin() as conn:
        # the cookie is stateless: remember its end here, or a kept copy would still work
        await sign_outs.record_sign_out(
            conn, ui.token.nonce, expires_at=ui.token.max_expiry, now=now
        )
        await audit.record(
            conn,
            environment_id=ui.principal.environment_id,
            actor=ui.principal.actor,
            action="ui.signed_out",
            now=now,
        )
    request.state.ui_renewed = None
    response = _redirect("/ui/sign-in")
    _clear_cookie(response, _policy(request), _policy(request).session_name)
    return response


@router.get("/connected")
async def connected(request: Request) -> Response:
    """A landing page for ``return_to`` (e.g. reconnect links sent to an end user).

    Public: the user arrives from the provider, without the admin session.
    """
    q = request.query_params
    ok = q.get("status") == "success"
    grant_id = q.get("grant_id", "")
    return _templates.render(
        "connected.html",
        ok=ok,
        grant_id=grant_id if is_grant_id(grant_id) else None,
    )


# --------------------------------------------------------------------------- dashboard


@router.get("")
async def dashboard(request: Request) -> Response:
    ui = await _signed_in(request)
    p = ui.principal
    only = tuple(sorted(p.integration_ids)) if p.integration_ids is not None else None

    async def load_counts() -> dict[str, int]:
        async with reading(ui.rt.engine) as conn:
            return await grant_counts(conn, p.environment_id, p.integration_ids)

    # a count over the environment's grants: reused for grant_counts_ttl, not per view
    counts = await ui.rt.counts.get((p.environment_id, only), load_counts)
    async with reading(ui.rt.engine) as conn:
        chart = await refresh_chart(conn, p.environment_id, ui.rt.clock.now(), p.integration_ids)
        integrations = await integ_store.list_integrations(conn, p.environment_id, only)
        endpoints = await webhook_store.list_endpoints(conn, p.environment_id, p.integration_ids)
        recent: list[dict[str, Any]] = []
        if p.integration_ids is None:
            recent, _ = await audit_store.list_events(conn, p.environment_id, limit=10)
    return _page(
        ui,
        "admin/dashboard.html",
        "dashboard",
        counts={s: counts.get(s, 0) for s in GRANT_STATUSES},
        total=sum(counts.values()),
        chart=chart,
        series=SERIES,
        integration_count=len(integrations),
        endpoint_count=len(endpoints),
        recent=recent,
    )


# --------------------------------------------------------------------------- integrations


def _integration_id(value: str) -> str:
    if not _INTEGRATION_ID.fullmatch(value):
        raise NotFound("no such integration")
    return value


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _lines(text):
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"{what}: write one name=value per line")
        out[name.strip()] = value.strip()
    return out


def _integration_values(form: FormData) -> dict[str, str]:
    """What the form re-displays after an error: everything except the write-only secrets."""
    values = {n: _text(form, n, 20_000) for n in _TEXT_FIELDS}
    values["connect_page"] = "1" if form.get("connect_page") else ""
    values["client_access"] = "1" if form.get("client_access") else ""
    return values


#: the form's text controls (a kind shows some of them; see ``_integration_input``)
_TEXT_FIELDS = (
    "id", "kind", "provider", "display_name", "client_id", "scopes", "return_urls", "issuer",
    "api_base_url", "server_url", "authorization_params", "token_params", "settings",
    "authorization_url", "token_url", "revocation_url", "userinfo_url", "request_token_url",
    "access_token_url", "token_endpoint_auth_method", "token_export", "stamp_in", "stamp_name",
    "stamp_template", "verify_method", "verify_path", "verify_status", "app_id",
)  # fmt: skip
_ENDPOINT_FIELDS = (
    "authorization_url", "token_url", "revocation_url", "userinfo_url", "request_token_url",
    "access_token_url", "token_endpoint_auth_method",
)  # fmt: skip


def _kv(pairs: Mapping[str, str] | None) -> str:
    return "\n".join(f"{k}={v}" for k, v in (pairs or {}).items())


def _record_values(rec: IntegrationRecord) -> dict[str, str]:
    ep = rec.endpoints or {}
    stamp = rec.stamp or {}
    verify = rec.verify_request or {}
    mcp = rec.mcp or {}
    return {
        "id": rec.id,
        "provider": rec.provider,
        "display_name": rec.display_name or "",
        "client_id": rec.client_id,
        "scopes": " ".join(rec.scopes),
        "return_urls": "\n".join(rec.return_urls),
        "issuer": rec.issuer or "",
        "api_base_url": rec.api_base_url or "",
        "server_url": str(mcp.get("server_url") or ""),
        "authorization_params": _kv(rec.authorization_params),
        "token_params": _kv(rec.token_params),
        "settings": _kv(rec.settings),
        **{f: ep.get(f, "") for f in _ENDPOINT_FIELDS},
        "token_export": rec.token_export,
        "connect_page": "1" if rec.connect_page else "",
        "client_access": "1" if rec.client_access else "",
        "stamp_in": str(stamp.get("in", "")),
        "stamp_name": str(stamp.get("name", "")) if stamp else "",
        "stamp_template": str(stamp.get("template") or ""),
        "verify_method": str(verify.get("method", "GET")),
        "verify_path": str(verify.get("path", "")),
        "verify_status": str(verify.get("expect_status", "")) if verify else "",
        "app_id": rec.app_id or "",
        "mcp_registration": str(mcp.get("registration") or ""),
    }


def _registered(rec: IntegrationRecord) -> bool:
    """An ``mcp`` integration whose client the vault registered itself (DCR, CIMD): its
    client id is not the admin's to give back (a given one would make it a static client)."""
    return bool(rec.mcp) and (rec.mcp or {}).get("registration") != "static"


def _record_body(rec: IntegrationRecord) -> dict[str, Any]:
    """The API body that stands for a stored integration (secrets omitted: kept on save)."""
    if rec.mcp:
        # found by discovery, not given: an mcp integration refuses them on a PUT
        return {**_body_of(rec), "issuer": None, "api_base_url": None, "endpoints": {}}
    return _body_of(rec)


def _body_of(rec: IntegrationRecord) -> dict[str, Any]:
    return {
        "display_name": rec.display_name,
        "client_id": None if _registered(rec) else rec.client_id or None,
        "scopes": list(rec.scopes),
        "return_urls": list(rec.return_urls),
        "issuer": rec.issuer,
        "api_base_url": rec.api_base_url,
        "server_url": (rec.mcp or {}).get("server_url"),
        "authorization_params": dict(rec.authorization_params),
        "token_params": dict(rec.token_params or {}),
        "settings": dict(rec.settings),
        "endpoints": dict(rec.endpoints or {}),
        "token_export": rec.token_export,
        "connect_page": rec.connect_page,
        "client_access": rec.client_access,
        "stamp": rec.stamp,
        "verify_request": rec.verify_request,
        "app_id": rec.app_id,
    }


class _FormInvalid(Exception):
    """Every problem of a submitted form at once, by field name (``form``: the whole form)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("the form has errors")
        self.errors = errors


#: the form's labels, for the summary above the form
_FIELD_LABELS = {
    "id": "Integration id",
    "provider": "Provider",
    "display_name": "Display name",
    "client_id": "Client id",
    "client_secret": "Client secret",
    "scopes": "Scopes",
    "return_urls": "Return URLs",
    "issuer": "Issuer",
    "api_base_url": "API base URL",
    "server_url": "MCP server URL",
    "authorization_url": "Authorization URL",
    "token_url": "Token URL",
    "revocation_url": "Revocation URL",
    "userinfo_url": "Userinfo URL",
    "request_token_url": "Request token URL",
    "access_token_url": "Access token URL",
    "token_endpoint_auth_method": "Token endpoint authentication",
    "authorization_params": "Extra authorization parameters",
    "token_params": "Token request parameters",
    "settings": "Provider settings",
    "token_export": "Token export",
    "client_access": "Client access",
    "stamp_in": "Credential placement",
    "stamp_name": "Header or parameter name",
    "stamp_template": "Value template",
    "verify_method": "Verification method",
    "verify_path": "Verification path",
    "verify_status": "Expected status",
    "app_id": "App id",
    "private_key": "Private key",
}
#: an API body location -> the form field that shows it
_LOC_FIELDS = {
    ("stamp", "in"): "stamp_in",
    ("stamp", "name"): "stamp_name",
    ("stamp", "template"): "stamp_template",
    ("verify_request", "method"): "verify_method",
    ("verify_request", "path"): "verify_path",
    ("verify_request", "expect_status"): "verify_status",
}


def _collect(errors: dict[str, list[str]], exc: ValidationError) -> None:
    """Pydantic's errors filed under the form field they belong to (first one per field)."""
    for e in exc.errors()[:40]:
        loc = [str(p) for p in e.get("loc", ()) if not isinstance(p, int)]
        if loc[:1] == ["endpoints"]:
            loc = loc[1:]
        field = _LOC_FIELDS.get((loc[0], loc[1])) if len(loc) > 1 else None
        if field is None:
            field = loc[0] if loc and loc[0] in _FIELD_LABELS else "form"
        too_short = (
            e.get("type") in ("string_too_short", "too_short")
            and (e.get("ctx") or {}).get("min_length") == 1
        )
        # the message only, never the input: it may be a secret
        message = (
            "required" if too_short or e.get("type") == "missing" else str(e.get("msg", "invalid"))
        )
        if field not in errors:
            errors[field] = [message[:300]]


def _integration_input(
    form: FormData,
    *,
    allow_private: bool,
    code_flow: bool = True,
    existing: IntegrationRecord | None = None,
) -> IntegrationInput:
    """The API body the form stands for, or ``_FormInvalid`` with every problem at once.

    A kind's form shows some settings only: whatever the submitted form does not carry
    keeps the stored value (an edit never drops what the form could not show).
    """
    v = _integration_values(form)
    shown = set(form.keys())
    errors: dict[str, list[str]] = {}
    if not v["provider"]:
        errors["provider"] = ["choose a provider"]
    base: dict[str, Any] = {}
    if existing is not None and existing.provider == v["provider"]:
        base = _record_body(existing)
    body: dict[str, Any] = {"provider": v["provider"]}
    if existing is not None:
        # not on the form at all: never dropped by a save
        body["health_probe_interval"] = existing.health_probe_interval

    def take(name: str, value: Any) -> None:
        if name in shown:
            body[name] = value
        elif name in base:
            body[name] = base[name]

    for url in _lines(v["return_urls"]):
        try:
            validate_return_url(url, allow_private=allow_private)
        except InvalidInput as exc:
            errors["return_urls"] = [exc.detail]
            break
    for name, what in (
        ("authorization_params", "Authorization parameters"),
        ("token_params", "Token request parameters"),
        ("settings", "Provider settings"),
    ):
        try:
            take(name, _pairs(v[name], what))
        except InvalidInput:
            errors[name] = ["write one name=value per line"]
    take("display_name", v["display_name"] or None)
    # the code flow needs a client id: an empty one is "required" beside the field
    take("client_id", v["client_id"] or ("" if code_flow else None))
    take("scopes", [s for s in re.split(r"[\s,]+", v["scopes"]) if s])
    take("return_urls", _lines(v["return_urls"]))
    take("issuer", v["issuer"] or None)
    take("api_base_url", v["api_base_url"] or None)
    take("server_url", v["server_url"] or None)
    take("token_export", v["token_export"] or "never")
    take("app_id", v["app_id"] or None)
    if "has_checks" in shown or not base:
        body["connect_page"] = bool(v["connect_page"])
        body["client_access"] = bool(v["client_access"])
    else:
        body["connect_page"], body["client_access"] = base["connect_page"], base["client_access"]
    endpoints = {
        k: val for k, val in (base.get("endpoints") or {}).items() if k not in shown and val
    }
    endpoints.update({f: v[f] for f in _ENDPOINT_FIELDS if f in shown and v[f]})
    body["endpoints"] = None
    if endpoints:
        try:
            body["endpoints"] = EndpointsInput.model_validate(endpoints)
        except ValidationError as exc:
            _collect(errors, exc)
    if "stamp_in" in shown:
        body["stamp"] = (
            {
                "in": v["stamp_in"],
                **({"name": v["stamp_name"]} if v["stamp_name"] else {}),
                "template": v["stamp_template"] or None,
            }
            if v["stamp_in"]
            else None
        )
    elif "stamp" in base:
        body["stamp"] = base["stamp"]
    if "verify_path" in shown:
        body["verify_request"] = (
            {
                "method": v["verify_method"] or "GET",
                "path": v["verify_path"],
                "expect_status": v["verify_status"] or 200,
            }
            if v["verify_path"]
            else None
        )
    elif "verify_request" in base:
        body["verify_request"] = base["verify_request"]
    # write-only: an empty field keeps the stored secret
    for name in ("client_secret", "private_key"):
        secret = form.get(name)
        if isinstance(secret, str) and secret.strip():
            body[name] = secret.strip() if name == "private_key" else secret
    try:
        parsed = IntegrationInput.model_validate(body)
    except ValidationError as exc:
        _collect(errors, exc)
    if errors:
        raise _FormInvalid(errors)
    return parsed


def _validation_messages(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors()[:20]:
        where = ".".join(str(p) for p in e.get("loc", ()) if not isinstance(p, int))
        # the message only, never the input: it may be a secret
        out.append(f"{where or 'form'}: {e.get('msg', 'invalid')}"[:300])
    return out


def _summary(errors: dict[str, list[str]]) -> list[str]:
    """The lines of the box above the form (each field's message is also beside the field)."""
    order = list(_FIELD_LABELS)
    return [
        f"{_FIELD_LABELS[name]}: {m}" if name in _FIELD_LABELS else m
        for name, messages in sorted(
            errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1
        )
        for m in messages
    ]


#: the form's kinds: (key, label, catalog auth modes)
KINDS = (
    ("code", "OAuth 2.0 / OpenID Connect", ("oauth2", "oidc")),
    ("api_key", "API key", ("api_key",)),
    ("basic", "Basic auth", ("basic",)),
    ("client_credentials", "Client credentials", ("client_credentials",)),
    ("jwt_bearer", "JWT bearer", ("jwt_bearer",)),
    ("github_app", "GitHub App", ("github_app",)),
    ("oauth1", "OAuth 1.0a", ("oauth1",)),
    ("mcp", "MCP server", ("mcp",)),
)
_KIND_OF_MODE = {mode: key for key, _, modes in KINDS for mode in modes}


def _kind(rt: Runtime, provider: str, fallback: str = "") -> str:
    """The form's kind for a provider (its catalog auth mode), else ``fallback`` or code."""
    if provider and provider in rt.catalog:
        return _KIND_OF_MODE.get(rt.catalog.get(provider).auth_mode, "code")
    return fallback if fallback in _KIND_OF_MODE.values() else "code"


def _integration_form(
    ui: Ui,
    *,
    creating: bool,
    values: dict[str, str],
    secret_set: bool,
    errors: dict[str, list[str]],
    key_set: bool = False,
    status: int = 200,
) -> Response:
    kind = _kind(ui.rt, values.get("provider", ""), values.get("kind", ""))
    modes = next(m for k, _, m in KINDS if k == kind)
    providers = sorted(
        (s for s in ui.rt.catalog.all() if s.auth_mode in modes),
        key=lambda s: s.display_name.casefold(),
    )
    chosen = values.get("provider", "")
    spec = ui.rt.catalog.get(chosen) if chosen and chosen in ui.rt.catalog else None
    return _page(
        ui,
        "admin/integration_form.html",
        "integrations",
        status=status,
        creating=creating,
        v={**values, "kind": kind},
        kind=kind,
        kinds=KINDS,
        spec=spec,
        secret_set=secret_set,
        key_set=key_set,
        errors=_summary(errors),
        field_errors=errors,
        generic_providers=[s for s in providers if s.is_generic],
        providers=[s for s in providers if not s.is_generic],
        callback_url=ui.rt.settings.callback_url,
        pattern=INTEGRATION_ID,
    )


@router.get("/integrations")
async def integrations_page(request: Request) -> Response:
    ui = await _signed_in(request)
    p = ui.principal
    only = tuple(sorted(p.integration_ids)) if p.integration_ids is not None else None
    async with reading(ui.rt.engine) as conn:
        recs = await integ_store.list_integrations(conn, p.environment_id, only)
    return _page(
        ui,
        "admin/integrations.html",
        "integrations",
        integrations=recs,
        callback_url=ui.rt.settings.callback_url,
        notice=_notice(request),
    )


@router.get("/integrations/new")
async def new_integration_page(request: Request) -> Response:
    ui = await _signed_in(request)
    # no provider preselected: the admin picks one (its default scopes are filled in then);
    # ?kind= narrows the list to one credential kind and shows that kind's fields
    kind = request.query_params.get("kind", "")
    values = {"provider": "", "token_export": "never", "kind": kind}
    return _integration_form(ui, creating=True, values=values, secret_set=False, errors={})


@router.post("/integrations/new")
async def create_integration(request: Request) -> Response:
    ui = await _signed_in(request)
    form = await _form(request, ui)
    integration_id = _integration_values(form)["id"]
    id_errors = {}
    if not _INTEGRATION_ID.fullmatch(integration_id):
        id_errors["id"] = [
            "use lowercase letters, digits, '-' and '_' (up to 63, starting with a letter or digit)"
        ]
    return await _save_integration(ui, form, integration_id, creating=True, id_errors=id_errors)


@router.get("/integrations/{integration_id}")
async def edit_integration_page(request: Request, integration_id: str) -> Response:
    ui = await _signed_in(request)
    p = ui.principal
    _integration_id(integration_id)
    if not p.may_use_integration(integration_id):
        raise NotFound("no such integration")
    async with reading(ui.rt.engine) as conn:
        rec = await integ_store.get(conn, p.environment_id, integration_id)
    if rec is None:
        raise NotFound("no such integration")
    return _integration_form(
        ui,
        creating=False,
        values=_record_values(rec),
        secret_set=rec.client_secret_ct is not None,
        key_set=rec.private_key_ct is not None,
        errors={},
    )


@router.post("/integrations/{integration_id}")
async def update_integration(request: Request, integration_id: str) -> Response:
    ui = await _signed_in(request)
    form = await _form(request, ui)
    _integration_id(integration_id)
    if not ui.principal.may_use_integration(integration_id):
        raise NotFound("no such integration")
    return await _save_integration(ui, form, integration_id, creating=False)


async def _save_integration(
    ui: Ui,
    form: FormData,
    integration_id: str,
    *,
    creating: bool,
    id_errors: dict[str, list[str]] | None = None,
) -> Response:
    p = ui.principal
    values = _integration_values(form)
    values["id"] = integration_id
    secret_set = False
    errors: dict[str, list[str]] = dict(id_errors or {})
    existing: IntegrationRecord | None = None
    try:
        p.require_integration(integration_id)
        async with ui.rt.engine.begin() as conn:
            if not id_errors:
                existing = await integ_store.get(conn, p.environment_id, integration_id)
            secret_set = existing is not None and existing.client_secret_ct is not None
            if not creating and existing is None:
                raise NotFound("no such integration")
            try:
                body = _integration_input(
                    form,
                    allow_private=ui.rt.settings.allow_private_networks,
                    code_flow=_kind(ui.rt, values["provider"], values["kind"]) == "code",
                    existing=None if creating else existing,
                )
            except _FormInvalid as exc:
                errors.update(exc.errors)
            if errors:
                raise _FormInvalid(errors)  # every problem at once, the id's included
            if creating and existing is not None:
                raise InvalidInput(f"an integration with the id {integration_id!r} already exists")
            _rec, created = await put_integration(
                conn, ui.rt, p.environment_id, integration_id, body
            )
            await audit.record(
                conn,
                environment_id=p.environment_id,
                actor=p.actor,
                action="integration.created" if created else "integration.updated",
                now=ui.rt.clock.now(),
                integration_id=integration_id,
                client_secret_changed=body.client_secret is not None,
            )
    except _FormInvalid:
        pass
    except NotFound:
        raise
    except GrantkeeperError as exc:
        if exc.status >= 500:
            raise
        field = exc.extra.get("field")
        errors = {
            field if isinstance(field, str) and field in _FIELD_LABELS else "form": [exc.detail]
        }
    else:
        notice = "integration-created" if created else "integration-updated"
        return _redirect(f"/ui/integrations?{urlencode({'notice': notice})}")
    return _integration_form(
        ui,
        creating=creating,
        values=values,
        secret_set=secret_set,
        key_set=existing is not None and existing.private_key_ct is not None,
        errors=errors,
        status=422,
    )


# --------------------------------------------------------------------------- grants


def _offset(value: str | None) -> int:
    try:
        return min(max(int(value or 0), 0), 10_000_000)
    except ValueError:
        return 0


@router.get("/grants")
async def grants_page(request: Request) -> Response:
    ui = await _signed_in(request)
    p = ui.principal
    q = request.query_params
    integration_id = q.get("integration_id") or None
    if integration_id is not None and not _INTEGRATION_ID.fullmatch(integration_id):
        integration_id = "\ufffd"  # matches nothing
    user_id = (q.get("user_id") or "").strip()[:255] or None
    if user_id is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in user_id):
        user_id = "\ufffd"
    status = q.get("status") if q.get("status") in GRANT_STATUSES else None
    offset = _offset(q.get("offset"))
    only = tuple(sorted(p.integration_ids)) if p.integration_ids is not None else None
    async with reading(ui.rt.engine) as conn:
        rows, more = await grant_store.list_grants(
            conn,
            p.environment_id,
            integration_id=integration_id,
            integration_ids=only,
            user_id=user_id,
            status=status,
            limit=PAGE_SIZE,
            offset=offset,
        )
        integrations = await integ_store.list_integrations(conn, p.environment_id, only)
    filters = {
        k: v
        for k, v in (
            ("integration_id", q.get("integration_id") or ""),
            ("user_id", user_id or ""),
            ("status", status or ""),
        )
        if v
    }

    def page_url(off: int) -> str:
        return "/ui/grants?" + urlencode({**filters, "offset": off} if off else filters)

    return _page(
        ui,
        "admin/grants.html",
        "grants",
        grants=[{**grant_view(r), "kind": _grant_kind(ui.rt, r.provider)} for r in rows],
        integrations=[i.id for i in integrations],
        statuses=GRANT_STATUSES,
        f=filters,
        offset=offset,
        first=offset + 1,
        last=offset + len(rows),
        prev_url=page_url(max(offset - PAGE_SIZE, 0)) if offset > 0 else None,
        next_url=page_url(offset + PAGE_SIZE) if more else None,
    )


def _grant_kind(rt: Runtime, provider: str) -> str:
    """The grant's credential kind (its catalog entry's auth mode), for display."""
    return rt.catalog.get(provider).auth_mode if provider in rt.catalog else "unknown"


def _public_fields(rt: Runtime, rec: GrantRecord) -> list[tuple[str, str]]:
    """The credential values the entry declares non-secret (a username, an installation id),
    as (label, value); never a secret, and never a token even where one is not secret."""
    if rec.credentials_ct is None or rec.provider not in rt.catalog or rec.revoked_at:
        return []
    labels = {f.name: f.label for f in rt.catalog.get(rec.provider).fields() if not f.secret}
    labels.setdefault("installation_id", "Installation id")
    labels = {k: v for k, v in labels.items() if "token" not in k}
    creds = open_credentials(rt.vault, rec)
    return [(label, value) for name, label in labels.items() if (value := creds.get(name))]


async def _grant_page(ui: Ui, grant_id: str, *, status: int = 200, **extra: Any) -> Response:
    p = ui.principal
    async with reading(ui.rt.engine) as conn:
        rec = await get_visible(conn, p.environment_id, grant_id, p.integration_ids)
        events, more = await audit_store.list_events(
            conn, p.environment_id, grant_id=rec.id, limit=100
        )
        integ = await integ_store.get(conn, p.environment_id, rec.integration_id)
    return _page(
        ui,
        "admin/grant.html",
        "grants",
        status=status,
        g=grant_view(rec),
        kind=_grant_kind(ui.rt, rec.provider),
        public_fields=_public_fields(ui.rt, rec),
        events=events,
        more_events=more,
        return_urls=list(integ.return_urls) if integ is not None else [],
        **extra,
    )


@router.get("/grants/{grant_id}")
async def grant_page(request: Request, grant_id: str) -> Response:
    ui = await _signed_in(request)
    return await _grant_page(ui, grant_id, notice=_notice(request))


@router.post("/grants/{grant_id}/reconnect")
async def reconnect(request: Request, grant_id: str) -> Response:
    ui = await _signed_in(request)
    form = await _form(request, ui)
    return_to = _text(form, "return_to", 2000)
    try:
        async with ui.rt.engine.begin() as conn:
            session = await connect.reconnect_session(
                conn, ui.rt, ui.principal, grant_id, return_to
            )
    except NotFound:
        raise
    except GrantkeeperError as exc:
        if exc.status >= 500:
            raise
        return await _grant_page(ui, grant_id, status=422, reconnect_error=exc.detail)
    return await _grant_page(ui, grant_id, status=201, connect_session=session)


@router.get("/grants/{grant_id}/revoke")
async def revoke_confirm(request: Request, grant_id: str) -> Response:
    ui = await _signed_in(request)
    p = ui.principal
    async with reading(ui.rt.engine) as conn:
        rec = await get_visible(conn, p.environment_id, grant_id, p.integration_ids)
    return _page(ui, "admin/revoke.html", "grants", g=grant_view(rec))


@router.post("/grants/{grant_id}/revoke")
async def revoke(request: Request, grant_id: str) -> Response:
    ui = await _signed_in(request)
    await _form(request, ui)
    result = await delete_grant(ui.rt, ui.principal, grant_id)
    notice = f"revoked-{result['provider_revocation']}"
    return _redirect(f"/ui/grants/{result['id']}?{urlencode({'notice': notice})}")


# --------------------------------------------------------------------------- webhooks


async def _webhooks_page(ui: Ui, *, status: int = 200, **extra: Any) -> Response:
    p = ui.principal
    async with reading(ui.rt.engine) as conn:
        endpoints = await webhook_store.list_endpoints(conn, p.environment_id, p.integration_ids)
        deliveries = await webhook_store.list_deliveries(conn, p.environment_id, limit=50)
    urls = {e["id"]: e["url"] for e in endpoints}
    # a key limited to some integrations sees the deliveries of its own endpoints only
    deliveries = [d for d in deliveries if d["endpoint_id"] in urls]
    extra.setdefault("v", {"url": "", "events": ["*"]})
    return _page(
        ui,
        "admin/webhooks.html",
        "webhooks",
        status=status,
        endpoints=endpoints,
        deliveries=deliveries,
        urls=urls,
        all_events=WEBHOOK_EVENTS,
        **extra,
    )


@router.get("/webhooks")
async def webhooks_page(request: Request) -> Response:
    ui = await _signed_in(request)
    return await _webhooks_page(ui, notice=_notice(request))


@router.post("/webhooks")
async def create_webhook(request: Request) -> Response:
    ui = await _signed_in(request)
    form = await _form(request, ui)
    url = _text(form, "url", 2000)
    events = [e for e in form.getlist("events") if isinstance(e, str)][:10]
    try:
        body = CreateWebhookEndpoint.model_validate({"url": url, "events": events})
        async with ui.rt.engine.begin() as conn:
            created = await create_endpoint(conn, ui.rt, ui.principal, body)
    except ValidationError as exc:
        errors = _validation_messages(exc)
    except GrantkeeperError as exc:
        if exc.status >= 500:
            raise
        errors = [exc.detail]
    else:
        # the signing secret is shown on this response only
        return await _webhooks_page(ui, status=201, created=created)
    return await _webhooks_page(ui, status=422, errors=errors, v={"url": url, "events": events})


@router.get("/webhooks/{endpoint_id}/delete")
async def delete_webhook_confirm(request: Request, endpoint_id: str) -> Response:
    ui = await _signed_in(request)
    async with reading(ui.rt.engine) as conn:
        endpoint = await webhook_store.get_endpoint(
            conn, ui.principal.environment_id, _endpoint_id(endpoint_id)
        )
    if endpoint is None or not webhook_store.endpoint_visible(
        endpoint, ui.principal.integration_ids
    ):
        raise NotFound("no such webhook endpoint")
    return _page(ui, "admin/webhook_delete.html", "webhooks", e=endpoint)


def _endpoint_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
        raise NotFound("no such webhook endpoint")
    return value


@router.post("/webhooks/{endpoint_id}/delete")
async def delete_webhook(request: Request, endpoint_id: str) -> Response:
    ui = await _signed_in(request)
    await _form(request, ui)
    async with ui.rt.engine.begin() as conn:
        await delete_endpoint(conn, ui.rt, ui.principal, _endpoint_id(endpoint_id))
    return _redirect("/ui/webhooks?notice=webhook-deleted")


@router.get("/{rest:path}")
async def not_found(request: Request, rest: str) -> Response:
    """Unknown ``/ui`` pages get the UI's 404 page rather than a JSON problem."""
    raise NotFound("There is no such page.")
