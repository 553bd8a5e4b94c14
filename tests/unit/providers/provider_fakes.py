"""Test helpers: build requests the way the connect flow and refresh engine do, against a fake
token endpoint (``httpx.MockTransport``), using only the catalog's data and quirk hooks."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

import httpx

from grantkeeper.providers import ProviderSpec
from grantkeeper.providers.quirks import apply_refresh_request, apply_token_response

CLIENT_ID = "client-123"
CLIENT_SECRET = "s3cr3t:with/odd+chars"
REDIRECT_URI = "https://vault.example.com/oauth/callback"


def authorization_query(
    spec: ProviderSpec,
    settings: Mapping[str, str] | None = None,
    *,
    scopes: Sequence[str] = (),
    consent: bool = False,
) -> tuple[str, dict[str, str]]:
    """The authorization URL the flow would build, and its query as a dict."""
    endpoints = spec.resolve(settings or {})
    assert endpoints.authorization_url is not None
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "state": "state-xyz",
    }
    scope = spec.scope_string(scopes, offline=spec.refresh.supported)
    if scope:
        params["scope"] = scope
    params.update(spec.authorization_extra_params(consent=consent))
    if spec.pkce:
        params["code_challenge"] = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        params["code_challenge_method"] = "S256"
    base = endpoints.authorization_url
    url = f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    return url, query


@dataclass
class FakeTokenEndpoint:
    """Answers every request with ``status`` and ``body``; records what it received."""

    body: Any
    status: int = 200
    content_type: str = "application/json"
    requests: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        content = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return httpx.Response(
            self.status, content=content, headers={"content-type": self.content_type}
        )

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.last.content.decode())

    def basic_credentials(self) -> tuple[str, str] | None:
        header = self.last.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return unquote(user), unquote(password)


def _client_auth(spec: ProviderSpec, form: dict[str, str]) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    method = spec.token_endpoint_auth_method
    if method == "client_secret_basic":
        # RFC 6749 2.3.1: form-urlencode id and secret before base64
        raw = f"{quote(CLIENT_ID, safe='')}:{quote(CLIENT_SECRET, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
    elif method == "client_secret_post":
        form["client_id"] = CLIENT_ID
        form["client_secret"] = CLIENT_SECRET
    else:
        form["client_id"] = CLIENT_ID
    return headers


def _post(spec: ProviderSpec, settings: Mapping[str, str], form: dict[str, str], fake: Any) -> Any:
    endpoints = spec.resolve(settings)
    assert endpoints.token_url is not None
    headers = _client_auth(spec, form)
    with httpx.Client(transport=httpx.MockTransport(fake.handler)) as client:
        response = client.post(endpoints.token_url, data=form, headers=headers)
    return response.json()


def exchange_code(
    spec: ProviderSpec, fake: FakeTokenEndpoint, settings: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Code exchange as the connect flow does it; returns the normalised body."""
    form = {"grant_type": "authorization_code", "code": "the-code", "redirect_uri": REDIRECT_URI}
    form.update(spec.token_params)
    if spec.pkce:
        form["code_verifier"] = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    raw = _post(spec, settings or {}, form, fake)
    return apply_token_response(spec, raw)


def refresh(
    spec: ProviderSpec,
    fake: FakeTokenEndpoint,
    refresh_token: str = "rt-old",
    settings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A refresh as the refresh engine does it; returns the normalised body."""
    params = apply_refresh_request(
        spec, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )
    raw = _post(spec, settings or {}, params, fake)
    return apply_token_response(spec, raw)
