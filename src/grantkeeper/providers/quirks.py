"""Provider quirks that data cannot express, as named hooks.

In the manner of Authlib's compliance hooks (``register_compliance_hook("refresh_token_response",
fix)``): the OAuth flow never asks *which* provider it talks to; it calls the functions below,
which run whatever hook the catalog entry names for that point, or the standard behaviour.

Hook points and signatures:

``token_response``
    ``(body: dict[str, Any]) -> dict[str, Any]``: normalise a raw token-endpoint JSON body to
    RFC 6749 section 5.1/5.2 fields before it is parsed.
``refresh_request``
    ``(params: dict[str, str]) -> dict[str, str]``: adjust the refresh form parameters.
``account_id``
    ``(token_body, id_claims, userinfo) -> str | None``: the provider account id.
``api_base_url``
    ``(token_body: dict[str, Any], base: str | None) -> str | None``: the proxy's base URL
    when it depends on the token response (Salesforce ``instance_url``).

Hooks are registered by decorators when this module is imported (definitions, no I/O).
Every hook is a pure function: it never mutates its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from grantkeeper.providers.catalog import ProviderSpec

__all__ = [
    "HOOK_POINTS",
    "AccountIdHook",
    "ApiBaseUrlHook",
    "HookPoint",
    "RefreshRequestHook",
    "TokenResponseHook",
    "apply_refresh_request",
    "apply_token_response",
    "dotted_get",
    "get_hook",
    "is_registered",
    "register_hook",
    "registered_hooks",
    "resolve_account_id",
    "resolve_api_base_url",
]

HookPoint = Literal["token_response", "refresh_request", "account_id", "api_base_url"]
HOOK_POINTS: Final[tuple[HookPoint, ...]] = (
    "token_response",
    "refresh_request",
    "account_id",
    "api_base_url",
)

TokenResponseHook = Callable[[dict[str, Any]], dict[str, Any]]
RefreshRequestHook = Callable[[dict[str, str]], dict[str, str]]
AccountIdHook = Callable[[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None], str | None]
ApiBaseUrlHook = Callable[[dict[str, Any], str | None], str | None]

F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {point: {} for point in HOOK_POINTS}


def register_hook(point: HookPoint, name: str) -> Callable[[F], F]:
    """Decorator: register ``fn`` as hook ``name`` at ``point``."""
    if point not in _REGISTRY:
        raise ValueError(f"unknown hook point {point!r}")

    def decorator(fn: F) -> F:
        if name in _REGISTRY[point] and _REGISTRY[point][name] is not fn:
            raise ValueError(f"hook {point}:{name} is already registered")
        _REGISTRY[point][name] = fn
        return fn

    return decorator


def get_hook(point: str, name: str) -> Callable[..., Any]:
    """The hook ``name`` at ``point``; ``KeyError`` if there is none."""
    try:
        return _REGISTRY[point][name]
    except KeyError:
        raise KeyError(f"no hook {name!r} registered at {point!r}") from None


def is_registered(point: str, name: str) -> bool:
    return name in _REGISTRY.get(point, {})


def registered_hooks() -> dict[str, tuple[str, ...]]:
    """Every registered hook name, by point."""
    return {point: tuple(sorted(hooks)) for point, hooks in _REGISTRY.items()}


# -- generic helpers --------------------------------------------------------------------------


def dotted_get(document: Mapping[str, Any] | None, path: str) -> Any:
    """``dotted_get({"a": {"b": 1}}, "a.b") == 1``; None when any step is missing."""
    current: Any = document
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _as_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _comma_scope_to_space(body: dict[str, Any]) -> dict[str, Any]:
    scope = body.get("scope")
    if isinstance(scope, str) and "," in scope:
        body["scope"] = " ".join(s.strip() for s in scope.split(",") if s.strip())
    return body


def _map_error(body: dict[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Turn a provider-specific ``error`` code into the RFC 6749 5.2 code, keeping the original."""
    error = body.get("error")
    if isinstance(error, str) and error in mapping:
        body["error"] = mapping[error]
        body.setdefault("error_description", error)
        body["provider_error"] = error
    return body


_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def _https_origin(value: Any, suffixes: tuple[str, ...], *, bare_host: bool = True) -> str | None:
    """``https://host`` if ``value`` is an https URL (or, with ``bare_host``, a bare host name)
    whose host ends in one of ``suffixes``; None otherwise.

    Anything with user info, a port, a path, a query or a fragment is refused.
    """
    if not isinstance(value, str) or not value:
        return None
    if "://" not in value:
        if not bare_host:
            return None
        value = f"https://{value}"
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unbalanced "[" (invalid IPv6 literal)
        return None
    host = parts.netloc.lower()
    if (
        parts.scheme != "https"
        or not host
        or not set(host) <= _HOST_CHARS
        or ".." in host
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
        or not host.endswith(suffixes)
    ):
        return None
    return f"https://{host}"


# -- the four entry points used by the flow, the refresh engine and the proxy ------------------


def apply_token_response(spec: ProviderSpec, body: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise a raw token-endpoint body for ``spec`` (a new dict; ``body`` is untouched)."""
    out = dict(body)
    name = spec.hooks.get("token_response")
    if name is not None:
        hook: TokenResponseHook = get_hook("token_response", name)
        out = hook(out)
    return out


def apply_refresh_request(spec: ProviderSpec, params: Mapping[str, str]) -> dict[str, str]:
    """Refresh form parameters: ``spec.token_params`` under ``params``, then the hook.

    Idempotent for ``token_params``: a caller that already added them gets the same result.
    """
    out = dict(spec.token_params)
    out.update(params)
    name = spec.hooks.get("refresh_request")
    if name is not None:
        hook: RefreshRequestHook = get_hook("refresh_request", name)
        out = hook(out)
    return out


def resolve_account_id(
    spec: ProviderSpec,
    token_body: Mapping[str, Any],
    id_claims: Mapping[str, Any] | None,
    userinfo: Mapping[str, Any] | None,
) -> str | None:
    """The provider account id: the named hook, else ``spec.account_id`` (a dotted path)."""
    name = spec.hooks.get("account_id")
    if name is not None:
        hook: AccountIdHook = get_hook("account_id", name)
        return hook(
            dict(token_body),
            None if id_claims is None else dict(id_claims),
            None if userinfo is None else dict(userinfo),
        )
    source = spec.account_id.source
    document: Mapping[str, Any] | None
    if source == "id_token":
        document = id_claims
    elif source == "token_response":
        document = token_body
    elif source == "userinfo":
        document = userinfo
    else:
        return None
    return _as_id(dotted_get(document, spec.account_id.field))


def resolve_api_base_url(
    spec: ProviderSpec, token_body: Mapping[str, Any], base: str | None
) -> str | None:
    """The proxy's API base URL: the named hook given the token response, else ``base``."""
    name = spec.hooks.get("api_base_url")
    if name is None:
        return base
    hook: ApiBaseUrlHook = get_hook("api_base_url", name)
    return hook(dict(token_body), base)


# -- token_response hooks -----------------------------------------------------------------------

_SLACK_ERRORS: Final[Mapping[str, str]] = {
    "invalid_code": "invalid_grant",
    "code_already_used": "invalid_grant",
    "code_expired": "invalid_grant",
    "invalid_refresh_token": "invalid_grant",
    "invalid_grant_type": "unsupported_grant_type",
    "bad_client_secret": "invalid_client",
    "invalid_client_id": "invalid_client",
    "bad_redirect_uri": "invalid_grant",
    "token_revoked": "invalid_grant",
    "token_expired": "invalid_grant",
}


@register_hook("token_response", "slack-oauth-v2")
def slack_oauth_v2(body: dict[str, Any]) -> dict[str, Any]:
    """Slack ``oauth.v2.access``.

    - Errors come as HTTP 200 ``{"ok": false, "error": "invalid_code"}``: mapped to RFC codes.
    - A user token (user scopes only, no bot scopes) sits under ``authed_user``: lifted to the
      top level when there is no top-level ``access_token``.
    - ``scope`` is comma-separated: made space-separated.
    """
    out = dict(body)
    if out.get("ok") is False:
        out.setdefault("error", "invalid_request")
        return _map_error(out, _SLACK_ERRORS)
    user = out.get("authed_user")
    if "access_token" not in out and isinstance(user, Mapping) and "access_token" in user:
        for key in ("access_token", "refresh_token", "expires_in", "scope", "token_type"):
            if key in user:
                out[key] = user[key]
    out.setdefault("token_type", "Bearer")
    if str(out.get("token_type", "")).lower() in {"bot", "user"}:
        out["token_type"] = "Bearer"
    return _comma_scope_to_space(out)


_GITHUB_ERRORS: Final[Mapping[str, str]] = {
    "bad_verification_code": "invalid_grant",
    "bad_refresh_token": "invalid_grant",
    "incorrect_client_credentials": "invalid_client",
    "unverified_user_email": "access_denied",
    "redirect_uri_mismatch": "invalid_grant",
}


@register_hook("token_response", "github-token-response")
def github_token_response(body: dict[str, Any]) -> dict[str, Any]:
    """GitHub: comma-separated ``scope``; own error codes (sent with HTTP 200) mapped to RFC ones."""
    out = _map_error(dict(body), _GITHUB_ERRORS)
    return _comma_scope_to_space(out)


@register_hook("token_response", "comma-scope")
def comma_scope(body: dict[str, Any]) -> dict[str, Any]:
    """Providers that answer with a comma-separated ``scope``."""
    return _comma_scope_to_space(dict(body))


@register_hook("token_response", "scope-list")
def scope_list(body: dict[str, Any]) -> dict[str, Any]:
    """Providers that answer with ``scope`` as a JSON array (Twitch)."""
    out = dict(body)
    scope = out.get("scope")
    if isinstance(scope, list):
        out["scope"] = " ".join(str(s) for s in scope if isinstance(s, str) and s)
    return out


@register_hook("token_response", "withings-body")
def withings_body(body: dict[str, Any]) -> dict[str, Any]:
    """Withings wraps every answer as ``{"status": 0, "body": {...}}``, errors with HTTP 200.

    A non-zero ``status`` becomes an RFC 6749 error; a zero status unwraps ``body``. Scopes are
    comma-separated.
    """
    status = body.get("status")
    if status is None:
        return _comma_scope_to_space(dict(body))
    wrapped = body.get("body")
    if status != 0 or not isinstance(wrapped, Mapping):
        detail = body.get("error")
        return {
            "error": "invalid_request",
            "error_description": str(detail) if detail else f"withings status {status}",
            "provider_error": str(status),
        }
    inner = dict(wrapped)
    if "userid" in inner and not isinstance(inner["userid"], str):
        inner["userid"] = str(inner["userid"])
    return _comma_scope_to_space(inner)


# -- api_base_url hooks --------------------------------------------------------------------------


@register_hook("api_base_url", "pipedrive-api-domain")
def pipedrive_api_domain(token_body: dict[str, Any], base: str | None) -> str | None:
    """Pipedrive: API calls go to the company domain sent as ``api_domain`` in token responses."""
    origin = _https_origin(token_body.get("api_domain"), (".pipedrive.com",))
    return base if origin is None else f"{origin}/api/v1"


_ZOHO_API_SUFFIXES: Final[tuple[str, ...]] = tuple(
    f".zohoapis.{tld}" for tld in ("com", "eu", "in", "com.au", "jp", "com.cn", "ca", "sa", "uk")
)


@register_hook("api_base_url", "zoho-crm-api-domain")
def zoho_crm_api_domain(token_body: dict[str, Any], base: str | None) -> str | None:
    """Zoho: the data centre's API host comes as ``api_domain`` in the token response."""
    origin = _https_origin(token_body.get("api_domain"), _ZOHO_API_SUFFIXES)
    return base if origin is None else f"{origin}/crm"


@register_hook("api_base_url", "wrike-host")
def wrike_host(token_body: dict[str, Any], base: str | None) -> str | None:
    """Wrike: the account's data centre host comes as ``host`` in the token response."""
    origin = _https_origin(token_body.get("host"), (".wrike.com",))
    return base if origin is None else f"{origin}/api/v4"


@register_hook("api_base_url", "surveymonkey-access-url")
def surveymonkey_access_url(token_body: dict[str, Any], base: str | None) -> str | None:
    """SurveyMonkey: the account's regional API host comes as ``access_url``."""
    origin = _https_origin(
        token_body.get("access_url"), (".surveymonkey.com", ".surveymonkey.ca", ".surveymonkey.eu")
    )
    return base if origin is None else f"{origin}/v3"


@register_hook("api_base_url", "adobe-sign-api-access-point")
def adobe_sign_api_access_point(token_body: dict[str, Any], base: str | None) -> str | None:
    """Acrobat Sign: API calls go to ``api_access_point`` from the token response."""
    origin = _https_origin(token_body.get("api_access_point"), (".adobesign.com", ".echosign.com"))
    return base if origin is None else f"{origin}/api/rest/v6"


_SALESFORCE_SUFFIXES: Final[tuple[str, ...]] = (
    ".salesforce.com",
    ".force.com",
    ".salesforce.mil",
    ".cloudforce.com",
    ".sfcrmproducts.cn",
)


def _salesforce_instance(token_body: Mapping[str, Any]) -> str | None:
    return _https_origin(token_body.get("instance_url"), _SALESFORCE_SUFFIXES, bare_host=False)


@register_hook("api_base_url", "salesforce-instance-url")
def salesforce_instance_url(token_body: dict[str, Any], base: str | None) -> str | None:
    """Salesforce: API calls go to the org's ``instance_url`` from the token response.

    Only an https Salesforce host is accepted; otherwise the configured ``base`` stays.
    """
    instance = _salesforce_instance(token_body)
    if instance is None:
        return base
    return f"{instance}/services/data"


# -- refresh_request hooks -----------------------------------------------------------------------


@register_hook("refresh_request", "basecamp-refresh-type")
def basecamp_refresh_type(params: dict[str, str]) -> dict[str, str]:
    """37signals Launchpad wants ``type=refresh`` on refresh (``type=web_server`` on exchange)."""
    out = dict(params)
    out["type"] = "refresh"
    return out


# -- account_id hooks ----------------------------------------------------------------------------


@register_hook("account_id", "etsy-user-id")
def etsy_user_id(
    token_body: dict[str, Any],
    id_claims: dict[str, Any] | None,
    userinfo: dict[str, Any] | None,
) -> str | None:
    """Etsy: access tokens are ``{user_id}.{secret}``; the numeric prefix is the user id."""
    token = token_body.get("access_token")
    if isinstance(token, str) and "." in token:
        prefix = token.split(".", 1)[0]
        if prefix.isdigit():
            return prefix
    return None


@register_hook("account_id", "salesforce-identity")
def salesforce_identity(
    token_body: dict[str, Any],
    id_claims: dict[str, Any] | None,
    userinfo: dict[str, Any] | None,
) -> str | None:
    """Salesforce: ``id`` in the token response is the identity URL ``.../id/{org}/{user}``.

    The account id is ``{org}/{user}`` (a user id is only unique within its org).
    """
    identity = token_body.get("id")
    if isinstance(identity, str):
        try:
            path = urlsplit(identity).path
        except ValueError:
            path = ""
        segments = [s for s in path.split("/") if s]
        if len(segments) >= 3 and segments[-3] == "id":
            return f"{segments[-2]}/{segments[-1]}"
    if id_claims is not None:
        org = _as_id(id_claims.get("organization_id"))
        user = _as_id(id_claims.get("user_id"))
        if org and user:
            return f"{org}/{user}"
    return None


@register_hook("account_id", "slack-team-user")
def slack_team_user(
    token_body: dict[str, Any],
    id_claims: dict[str, Any] | None,
    userinfo: dict[str, Any] | None,
) -> str | None:
    """Slack ``oauth.v2.access``: ``{team.id}/{authed_user.id}`` (user ids are per workspace)."""
    team = _as_id(dotted_get(token_body, "team.id"))
    user = _as_id(dotted_get(token_body, "authed_user.id"))
    if team and user:
        return f"{team}/{user}"
    enterprise = _as_id(dotted_get(token_body, "enterprise.id"))
    return team or enterprise or user
