"""A stand-in for the app's own login system: a JWT issuer on loopback.

``AppIssuer`` serves, from its own origin (a second loopback origin, not grantkeeper's):

- ``GET /jwks.json``: its public keys (RS256, ES256 and EdDSA), fetch-counted;
- ``GET /login?user=ID``: a test login endpoint answering ``{"token": <JWT for ID>}``;
- ``GET /app/...``: pages registered with ``add_page`` (the browser test's app).

``sign()`` makes good and bad JWTs for the negative tests.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

AUDIENCE = "gk-test-app"


class AppIssuer:
    def __init__(self, audience: str = AUDIENCE) -> None:
        self.audience = audience
        self.keys: dict[str, Any] = {
            "RS256": RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS256", "use": "sig"}, private=True),
            "ES256": ECKey.generate_key("P-256", parameters={"kid": "ec-1", "alg": "ES256", "use": "sig"}, private=True),
            "EdDSA": OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1", "use": "sig"}, private=True),
        }
        #: keys published in the JWKS (kid -> key); tests may add/remove to rotate
        self.published: dict[str, Any] = {k.kid: k for k in self.keys.values()}
        self.jwks_fetches = 0
        self.pages: dict[str, tuple[str, bytes]] = {}
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path == "/jwks.json":
                    issuer.jwks_fetches += 1
                    body = json.dumps({"keys": [k.as_dict(private=False) for k in issuer.published.values()]}).encode()
                    self._send(200, "application/json", body)
                elif parts.path == "/login":
                    user = parse_qs(parts.query).get("user", ["alice-app-user"])[0]
                    self._send(200, "application/json", json.dumps({"token": issuer.sign(user)}).encode())
                elif parts.path in issuer.pages:
                    ctype, body = issuer.pages[parts.path]
                    self._send(200, ctype, body)
                else:
                    self._send(404, "text/plain", b"not found")

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = self.origin
        self.jwks_uri = f"{self.origin}/jwks.json"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add_page(self, path: str, html: str) -> str:
        self.pages[path] = ("text/html; charset=utf-8", html.encode())
        return self.origin + path

    def claims(self, user: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        for k, v in overrides.items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        return claims

    def sign(self, user: str, *, alg: str = "RS256", key: Any = None, kid: str | None = None, **overrides: Any) -> str:
        key = key if key is not None else self.keys[alg]
        header = {"alg": alg, "kid": kid if kid is not None else key.kid, "typ": "JWT"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode(header, self.claims(user, **overrides), key, algorithms=[alg])

    def trust_body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "audience": self.audience,
            "user_id_claim": "sub",
            "allowed_origins": [self.origin],
        }
        body.update(overrides)
        return body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app_issuer() -> Iterator[AppIssuer]:
    issuer = AppIssuer()
    yield issuer
    issuer.close()
