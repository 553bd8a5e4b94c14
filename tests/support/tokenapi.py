"""A local token issuer and API that check signed assertions the way providers document them.

* ``POST /token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` (RFC 7523
  2.1, Google's service-account flow): the ``assertion`` must be signed (RS256/ES256) by the
  key registered for its ``kid`` (or ``iss``), ``iss`` must be that key's issuer, ``aud`` this
  token URL, ``exp`` in the future and at most one hour after ``iat``. Answers a bearer token.
* GitHub App endpoints (docs.github.com "Authenticating as a GitHub App"): an app JWT (RS256,
  ``iss`` = app id, ``exp`` at most 10 minutes ahead) signed with the app's key is required
  for ``GET /app/installations/{id}`` and ``POST /app/installations/{id}/access_tokens``
  (201 ``{"token", "expires_at"}``); ``DELETE /installation/token`` revokes the installation
  token it is called with.
* GitHub's user-to-server web flow, used to check who connects an installation (docs.github.com
  "Generating a user access token for a GitHub App", "About the setup URL"):
  ``POST /login/oauth/access_token`` (``client_id``, ``client_secret``, ``code``) answers a
  ``ghu_`` user token, and errors with HTTP 200 and an ``error`` member as GitHub does;
  ``GET /user/installations`` with that token lists the app's installations the user can
  access (``{"total_count", "installations": [...]}``, paged by ``per_page``/``page``).
* ``GET /api/...``: 200 for a live token issued here, else 401.

Counts every mint, so tests can assert single-flight.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

__all__ = ["TokenApi", "token_api"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class TokenApi:
    #: kid or issuer -> (issuer, public key)
    keys: dict[str, tuple[str, RSAKey | ECKey]] = field(default_factory=dict)
    #: GitHub App: app id -> public key; installation ids that exist
    apps: dict[str, RSAKey] = field(default_factory=dict)
    installations: set[str] = field(default_factory=set)
    #: the app's OAuth client (client id -> secret); login -> installations the user can access
    oauth_clients: dict[str, str] = field(default_factory=dict)
    user_installations: dict[str, set[str]] = field(default_factory=dict)
    #: one-time codes from the user authorization -> login
    codes: dict[str, str] = field(default_factory=dict)
    code_exchanges: int = 0
    #: token -> (expires_at, who)
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)
    mints: int = 0
    revoked: list[str] = field(default_factory=list)
    claims_seen: list[dict[str, Any]] = field(default_factory=list)
    #: the jwt-bearer form fields other than the assertion, per request
    forms_seen: list[dict[str, str]] = field(default_factory=list)
    #: the ``aud`` the assertion must carry (Salesforce's login host, Box's token URL ...);
    #: None: this server's token URL
    audience: str | None = None
    ttl: int = 3600
    server: http.server.ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    def _issue(self, who: str, prefix: str = "at_") -> tuple[str, float]:
        token = prefix + secrets.token_urlsafe(24)
        exp = time.time() + self.ttl
        with self.lock:
            self.tokens[token] = (exp, who)
            self.mints += 1
        return token, exp

    def issue_code(self, login: str) -> str:
        """The ``code`` GitHub puts on the callback after ``login`` authorized the app."""
        code = secrets.token_hex(10)
        with self.lock:
            self.codes[code] = login
        return code

    def _user_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.code_exchanges += 1
        cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not cid or self.oauth_clients.get(cid) != secret:
            return 200, {"error": "incorrect_client_credentials"}
        with self.lock:
            login = self.codes.pop(form.get("code", ""), None)
        if login is None:
            return 200, {"error": "bad_verification_code"}
        token, _ = self._issue(f"user:{login}", "ghu_")
        return 200, {"access_token": token, "token_type": "bearer", "scope": ""}

    def _jwt_bearer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assertion = form.get("assertion", "")
        header = _header(assertion)
        kid = header.get("kid")
        unverified = _claims(assertion)
        entry = self.keys.get(kid) if kid else self.keys.get(str(unverified.get("iss")))
        if entry is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown key"}
        issuer, key = entry
        try:
            tok = jwt.decode(assertion, key, algorithms=["RS256", "ES256"])
        except (JoseError, ValueError):
            return 400, {"error": "invalid_grant", "error_description": "bad signature"}
        c = tok.claims
        self.claims_seen.append(dict(c))
        self.forms_seen.append({k: v for k, v in form.items() if k != "assertion"})
        now = time.time()
        if (
            c.get("iss") != issuer
            or c.get("aud") != (self.audience or self.token_url)
            or not isinstance(c.get("exp"), int)
            or c["exp"] <= now
            or not isinstance(c.get("iat"), int)
            or c["exp"] - c["iat"] > 3600
        ):
            return 400, {"error": "invalid_grant", "error_description": "bad claims"}
        token, _ = self._issue(str(c.get("sub")))
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.ttl,
        }
        if form.get("scope"):
            body["scope"] = form["scope"]
        return 200, body

    def _app_jwt_ok(self, auth: str) -> bool:
        scheme, _, token = auth.partition(" ")
        if scheme != "Bearer" or not token:
            return False
        iss = str(_claims(token).get("iss"))
        key = self.apps.get(iss)
        if key is None:
            return False
        try:
            c = jwt.decode(token, key, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return False
        now = time.time()
        return (
            isinstance(c.get("exp"), int)
            and isinstance(c.get("iat"), int)
            and c["exp"] > now
            and c["exp"] - now <= 600
            and c["iat"] <= now + 60
        )

    def _live(self, auth: str) -> str | None:
        scheme, _, token = auth.partition(" ")
        if scheme not in ("Bearer", "token"):
            return None
        entry = self.tokens.get(token)
        if entry is None or entry[0] <= time.time():
            return None
        return entry[1]


def _b64json(part: str) -> dict[str, Any]:
    import base64

    try:
        data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _header(token: str) -> dict[str, Any]:
    return _b64json(token.split(".")[0]) if token.count(".") == 2 else {}


def _claims(token: str) -> dict[str, Any]:
    return _b64json(token.split(".")[1]) if token.count(".") == 2 else {}


def _serve(api: TokenApi) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: dict[str, Any] | None) -> None:
            raw = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _any(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            path = urlsplit(self.path).path
            auth = self.headers.get("authorization", "")
            m = self.command
            if m == "POST" and path == "/token":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                if form.get("grant_type") != JWT_BEARER:
                    return self._send(400, {"error": "unsupported_grant_type"})
                return self._send(*api._jwt_bearer(form))
            if m == "POST" and path == "/login/oauth/access_token":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                return self._send(*api._user_token(form))
            parts = path.strip("/").split("/")
            if m == "GET" and path == "/user/installations":
                who = api._live(auth) or ""
                if not who.startswith("user:"):
                    return self._send(401, {"message": "Bad credentials"})
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                per_page, page = int(query.get("per_page", "30")), int(query.get("page", "1"))
                mine = sorted(api.user_installations.get(who[5:], set()) & api.installations)
                chunk = mine[(page - 1) * per_page : page * per_page]
                return self._send(
                    200,
                    {
                        "total_count": len(mine),
                        "installations": [{"id": int(i), "app_id": 1} for i in chunk],
                    },
                )
            if parts[:2] == ["app", "installations"] and len(parts) >= 3:
                if not api._app_jwt_ok(auth):
                    return self._send(401, {"message": "A JSON web token could not be decoded"})
                inst = parts[2]
                if inst not in api.installations:
                    return self._send(404, {"message": "Not Found"})
                if m == "GET" and len(parts) == 3:
                    return self._send(
                        200, {"id": int(inst), "account": {"login": "acme", "id": 4242}}
                    )
                if m == "POST" and parts[3:] == ["access_tokens"]:
                    token, exp = api._issue(f"installation:{inst}", "ghs_")
                    iso = datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    return self._send(201, {"token": token, "expires_at": iso})
            if m == "DELETE" and path == "/installation/token":
                scheme, _, token = auth.partition(" ")
                if api._live(auth) is None:
                    return self._send(401, {"message": "Bad credentials"})
                with api.lock:
                    api.tokens.pop(token, None)
                    api.revoked.append(token)
                return self._send(204, None)
            if parts[:1] == ["api"]:
                who = api._live(auth)
                if who is None:
                    return self._send(401, {"error": "invalid_token"})
                return self._send(200, {"ok": True, "who": who, "path": path})
            return self._send(404, {"error": "not_found"})

        do_GET = do_POST = do_DELETE = _any  # noqa: N815

        def log_message(self, *args: Any) -> None:
            return

    api.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=api.server.serve_forever, daemon=True).start()


@pytest.fixture
def token_api() -> Iterator[TokenApi]:
    api = TokenApi()
    _serve(api)
    try:
        yield api
    finally:
        assert api.server is not None
        api.server.shutdown()
        api.server.server_close()
