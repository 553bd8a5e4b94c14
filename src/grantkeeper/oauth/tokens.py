"""Token endpoint calls (RFC 6749 sections 4.1.3, 5, 6) and revocation (RFC 7009) over the
lean HTTP/1.1 client (``oauth.http1``).

Provider error bodies are never logged or passed on verbatim: the error code is
kept, the description is shortened and scrubbed of any secret we sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
import orjson

from grantkeeper.errors import ProviderOutcomeUnknown, ProviderUnavailable
from grantkeeper.oauth.body import MAX_PROVIDER_BODY, BodyTooLarge, read_body
from grantkeeper.oauth.http1 import Http1Client, Http1Error, IncompleteAnswer

__all__ = [
    "ClientCredentials",
    "OAuthErrorResponse",
    "TokenSet",
    "parse_token_body",
    "post_form",
    "revoke_token",
    "scrub",
    "token_request",
]

log = logging.getLogger(__name__)

# fields of a token response that are secrets or are handled explicitly; the rest may be kept
_KNOWN = {
    "access_token",
    "refresh_token",
    "id_token",
    "token_type",
    "expires_in",
    "scope",
    "expires_at",
}
_SECRETISH = re.compile(r"token|secret|code|password|key|signature|assertion", re.I)
_PERMANENT = {
    "invalid_grant",
    "invalid_scope",
    "access_denied",
    "consent_required",
    "interaction_required",
    "login_required",
}


#: the provider refuses the app's own client: every grant of the integration is affected,
#: none of them is dead (v2 contract, "Durability and operations")
_INTEGRATION = {"invalid_client", "unauthorized_client"}

#: how long the body of an answer may take to arrive whole, as long as it keeps arriving
#: (the HTTP timeout bounds silence): a rotated refresh token is in that body
ANSWER_DEADLINE_FACTOR = 6
ANSWER_DEADLINE_MIN = 60.0


@dataclass(frozen=True, slots=True, repr=False)
class ClientCredentials:
    client_id: str
    client_secret: str | None
    auth_method: str  # client_secret_basic | client_secret_post | none

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, auth_method={self.auth_method!r})"

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        """Client authentication (RFC 6749 2.3.1): id and secret form-urlencoded before base64."""
        if self.auth_method == "client_secret_basic" and self.client_secret is not None:
            raw = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
        elif self.auth_method == "client_secret_post" and self.client_secret is not None:
            form["client_id"] = self.client_id
            form["client_secret"] = self.client_secret
        else:
            form["client_id"] = self.client_id


@dataclass(frozen=True, slots=True, repr=False)
class TokenSet:
    """A parsed token response. ``repr`` shows no secret."""

    access_token: str
    token_type: str
    refresh_token: str | None
    expires_in: float | None
    scope: tuple[str, ...] | None
    id_token: str | None
    #: non-secret extra members (e.g. instance_url), safe to store in clear
    extra: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TokenSet(token_type={self.token_type!r}, expires_in={self.expires_in!r}, scope={self.scope!r})"


class OAuthErrorResponse(Exception):
    """The provider answered with an OAuth error (RFC 6749 5.2)."""

    def __init__(self, error: str, description: str | None, status: int) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error} (HTTP {status})")

    @property
    def permanent(self) -> bool:
        """The grant itself is dead (vs. a misconfiguration or a transient problem)."""
        return self.error in _PERMANENT

    @property
    def kind(self) -> str:
        """Whose problem it is: ``grant`` (the user must reconnect), ``integration`` (the
        app's client was refused: ``invalid_client``, ``unauthorized_client``), or
        ``other`` (a request the provider did not like this time)."""
        if self.error in _PERMANENT:
            return "grant"
        if self.error in _INTEGRATION:
            return "integration"
        return "other"


def scrub(text: str | None, secrets: Iterable[str | None] = (), limit: int = 200) -> str | None:
    """Shorten provider text and cut out anything secret we know of or that looks like a token."""
    if not text:
        return None
    out = "".join(c if c.isprintable() else " " for c in str(text))[: limit * 2]
    for s in secrets:
        if s and len(s) >= 4:
            out = out.replace(s, "[redacted]")
    # long opaque runs look like tokens: never echo them
    out = re.sub(r"[A-Za-z0-9._~+/=-]{24,}", "[redacted]", out)
    return out[:limit]


def parse_token_body(body: Mapping[str, Any]) -> TokenSet:
    """Parse a (hook-normalised) successful token response body."""
    at = body.get("access_token")
    if not isinstance(at, str) or not at:
        raise OAuthErrorResponse("invalid_response", "the token response has no access_token", 200)
    rt = body.get("refresh_token")
    exp: float | None = None
    raw_exp = body.get("expires_in")
    if raw_exp not in (None, ""):
        try:
            exp = float(raw_exp)  # some providers send a string
        except (TypeError, ValueError):
            exp = None
        if exp is not None and exp <= 0:
            exp = None
    scope_raw = body.get("scope")
    scope: tuple[str, ...] | None = None
    if isinstance(scope_raw, str):
        scope = tuple(s for s in re.split(r"[ ,]+", scope_raw.strip()) if s)
    elif isinstance(scope_raw, list):
        scope = tuple(str(s) for s in scope_raw)
    idt = body.get("id_token")
    extra = {
        k: v
        for k, v in body.items()
        if k not in _KNOWN
        and not _SECRETISH.search(k)
        and isinstance(v, str | int | float | bool)
        and len(str(v)) <= 500
    }
    return TokenSet(
        access_token=at,
        token_type=str(body.get("token_type") or "Bearer"),
        refresh_token=rt if isinstance(rt, str) and rt else None,
        expires_in=exp,
        scope=scope,
        id_token=idt if isinstance(idt, str) and idt else None,
        extra=extra,
        raw=dict(body),
    )


def _retry_after(headers: Mapping[str, str], default: int = 5) -> int:
    v = headers.get("Retry-After")
    if v and v.strip().isdigit():
        return min(int(v.strip()), 3600)
    return default


async def post_form(
    http: Http1Client | aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    headers: dict[str, str],
    *,
    timeout: float,
    secrets: Iterable[str | None] = (),
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """POST a form; return (status, JSON-or-form body as dict, headers).

    Transport failures, timeouts, 5xx and 429 raise ``ProviderUnavailable``.
    ``timeout`` bounds connecting and each silence while waiting, not the whole answer:
    a body that keeps arriving is read to its end (within ``ANSWER_DEADLINE_*``), since
    a provider that answers 2xx has done the work (rotated the refresh token). The
    request is never sent twice by the client (``oauth.http1``): whether to present a
    refresh token again is the refresh engine's decision.
    """
    send = {
        "Accept": "application/json",
        "Accept-Encoding": "identity",  # a token answer is small: nothing to decompress
        **headers,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    answer_deadline = max(ANSWER_DEADLINE_MIN, ANSWER_DEADLINE_FACTOR * timeout)
    if isinstance(http, aiohttp.ClientSession):
        status, raw, rh = await _post_form_aiohttp(
            http, url, form, headers, timeout=timeout, secrets=secrets
        )
        return _form_answer(status, raw, rh)
    try:
        resp = await http.request(
            "POST",
            url,
            send,
            urlencode(form).encode(),
            timeout=timeout,
            answer_deadline=answer_deadline,
            max_body=MAX_PROVIDER_BODY,
        )
    except IncompleteAnswer as exc:
        status = exc.status
        name = type(exc.cause).__name__
        if 200 <= status < 300:
            raise ProviderOutcomeUnknown(
                f"the provider's HTTP {status} answer could not be read whole ({name})"
            ) from None
        raise ProviderUnavailable(
            f"the provider's HTTP {status} answer could not be read ({name})",
            retry_after=_retry_after(exc.headers),
        ) from None
    except TimeoutError:
        raise ProviderUnavailable("the provider did not answer in time", retry_after=5) from None
    except (Http1Error, OSError) as exc:
        raise ProviderUnavailable(
            f"could not reach the provider ({type(exc).__name__})", retry_after=5
        ) from None
    return _form_answer(resp.status, resp.body, resp.headers)


def _form_answer(
    status: int, raw: bytes, rh: Mapping[str, str]
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    if status >= 500 or status == 429:
        raise ProviderUnavailable(
            f"the provider answered HTTP {status}", retry_after=_retry_after(rh)
        )
    body: dict[str, Any]
    try:
        parsed = orjson.loads(raw) if raw else {}
        body = parsed if isinstance(parsed, dict) else {}
    except orjson.JSONDecodeError:
        if raw.lstrip()[:1] in (b"{", b"["):
            body = {}  # JSON cut short or broken: not a form either
        else:
            body = dict(parse_qsl(raw.decode("utf-8", "replace")))
    return status, body, rh


async def _post_form_aiohttp(
    http: aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    headers: dict[str, str],
    *,
    timeout: float,
    secrets: Iterable[str | None] = (),
) -> tuple[int, bytes, Mapping[str, str]]:
    """``post_form`` over an aiohttp session (callers that hold one): the same timeouts
    and failure classes as the lean client."""
    headers = {"Accept": "application/json", **headers}
    answer_deadline = max(ANSWER_DEADLINE_MIN, ANSWER_DEADLINE_FACTOR * timeout)
    try:
        async with http.post(
            url,
            data=form,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            rh = resp.headers
            try:
                async with asyncio.timeout(answer_deadline):
                    raw = await read_body(resp)
            except (TimeoutError, aiohttp.ClientError, OSError, BodyTooLarge) as exc:
                if 200 <= status < 300:
                    raise ProviderOutcomeUnknown(
                        f"the provider's HTTP {status} answer could not be read whole "
                        f"({type(exc).__name__})"
                    ) from None
                raise ProviderUnavailable(
                    f"the provider's HTTP {status} answer could not be read ({type(exc).__name__})",
                    retry_after=_retry_after(rh),
                ) from None
    except TimeoutError:
        raise ProviderUnavailable("the provider did not answer in time", retry_after=5) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ProviderUnavailable(
            f"could not reach the provider ({type(exc).__name__})", retry_after=5
        ) from None
    return status, raw, rh


def _raise_for_error(status: int, body: Mapping[str, Any], secrets: Iterable[str | None]) -> None:
    # some providers (GitHub) answer errors with HTTP 200
    err = body.get("error")
    if err or status >= 400:
        code = (
            str(err)
            if isinstance(err, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(err))
            else "invalid_request"
        )
        desc = body.get("error_description")
        raise OAuthErrorResponse(
            code, scrub(desc if isinstance(desc, str) else None, secrets), status
        )


async def token_request(
    http: Http1Client | aiohttp.ClientSession,
    token_url: str,
    client: ClientCredentials,
    params: Mapping[str, str],
    *,
    timeout: float,
    normalise: Any = None,
) -> TokenSet:
    """One call to the token endpoint. ``normalise`` is the provider's token_response hook."""
    form = {k: v for k, v in params.items() if v is not None}
    headers: dict[str, str] = {}
    client.apply(form, headers)
    secrets = [
        client.client_secret,
        form.get("refresh_token"),
        form.get("code"),
        form.get("code_verifier"),
    ]
    status, body, _ = await post_form(
        http, token_url, form, headers, timeout=timeout, secrets=secrets
    )
    if normalise is not None:
        body = normalise(body)
    _raise_for_error(status, body, secrets)
    if 200 <= status < 300 and not (
        isinstance(body.get("access_token"), str) and body["access_token"]
    ):
        # a success we cannot use: the provider may still have rotated the refresh token
        raise ProviderOutcomeUnknown(
            f"the provider's HTTP {status} token response could not be parsed"
        )
    return parse_token_body(body)


async def revoke_token(
    http: Http1Client | aiohttp.ClientSession,
    revocation_url: str,
    client: ClientCredentials,
    token: str,
    token_type_hint: str,
    *,
    timeout: float,
) -> None:
    """RFC 7009: any 200 is success (2.2); 503/5xx raise ProviderUnavailable; other errors OAuthErrorResponse."""
    form = {"token": token, "token_type_hint": token_type_hint}
    headers: dict[str, str] = {}
    client.apply(form, headers)
    status, body, _ = await post_form(
        http, revocation_url, form, headers, timeout=timeout, secrets=[token, client.client_secret]
    )
    if status == 200:
        return
    _raise_for_error(status if status >= 400 else 400, body, [token, client.client_secret])
