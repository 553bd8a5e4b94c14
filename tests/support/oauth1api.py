"""A local OAuth 1.0a provider (RFC 5849) built on Authlib's server components.

Every request's HMAC-SHA1 signature is checked by Authlib (``OAuth1Request`` +
``verify_hmac_sha1``) with the consumer secret and the token secret in play, over the exact
URL and, for form bodies, the body parameters; timestamps older than 5 minutes and replayed
nonces are refused.

* ``POST /oauth/request_token`` (2.1): needs ``oauth_callback``; answers temporary credentials
  and ``oauth_callback_confirmed=true``.
* ``GET /oauth/authorize?oauth_token=`` (2.2): the user approves (or, with ``deny``, denies) and
  is sent to the callback with ``oauth_token`` and ``oauth_verifier``.
* ``POST /oauth/access_token`` (2.3): needs the verifier; answers token credentials and
  ``user_id``.
* ``/api/...`` (3): 200 ``{"who": user_id, "form": ...}`` for a valid signature, else 401.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from authlib.oauth1.rfc5849.signature import verify_hmac_sha1
from authlib.oauth1.rfc5849.wrapper import OAuth1Request

__all__ = ["OAuth1Api", "oauth1_api"]


class _Secret:
    def __init__(self, client: str | None = None, token: str | None = None) -> None:
        self.client, self.token = client, token

    def get_client_secret(self) -> str | None:
        return self.client

    def get_oauth_token_secret(self) -> str | None:
        return self.token


@dataclass
class OAuth1Api:
    consumers: dict[str, str] = field(default_factory=dict)
    #: temporary token -> (secret, consumer, callback, verifier)
    temporary: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    #: access token -> (secret, user_id)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    nonces: set[str] = field(default_factory=set)
    deny: bool = False
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def check(self, req: OAuth1Request, token_secret: str | None) -> bool:
        secret = self.consumers.get(req.client_id or "")
        if secret is None:
            return False
        nonce = req.oauth_params.get("oauth_nonce", "")
        ts = req.oauth_params.get("oauth_timestamp", "0")
        if not nonce or (nonce, ts) in self.nonces or abs(time.time() - int(ts)) > 300:
            return False
        if req.signature_method != "HMAC-SHA1":
            return False
        req.client = _Secret(client=secret)  # type: ignore[assignment]
        req.credential = _Secret(token=token_secret)  # type: ignore[assignment]
        if not verify_hmac_sha1(req):
            return False
        self.nonces.add((nonce, ts))  # type: ignore[arg-type]
        return True


def _serve(api: OAuth1Api) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, ctype: str = "application/json", location: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(body)

        def _any(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            parts = urlsplit(self.path)
            uri = f"{api.base_url}{self.path}"
            headers = {"-".join(p.capitalize() for p in k.split("-")): v for k, v in self.headers.items()}
            is_form = (headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded")
            try:
                req = OAuth1Request(self.command, uri, raw if is_form else None, headers)
            except Exception:  # noqa: BLE001 - malformed OAuth parameters
                return self._send(400, b'{"error":"bad_request"}')
            path = parts.path
            if path == "/oauth/request_token" and self.command == "POST":
                callback = req.redirect_uri
                if not callback or not api.check(req, None):
                    return self._send(401, b"oauth_problem=signature_invalid", "application/x-www-form-urlencoded")
                token, secret = "rt_" + secrets.token_urlsafe(12), secrets.token_urlsafe(16)
                api.temporary[token] = (secret, req.client_id or "", callback, secrets.token_urlsafe(8))
                body = urlencode({"oauth_token": token, "oauth_token_secret": secret, "oauth_callback_confirmed": "true"})
                return self._send(200, body.encode(), "application/x-www-form-urlencoded")
            if path == "/oauth/authorize" and self.command == "GET":
                token = parse_qs(parts.query).get("oauth_token", [""])[0]
                entry = api.temporary.get(token)
                if entry is None:
                    return self._send(400, b'{"error":"unknown token"}')
                _, _, callback, verifier = entry
                sep = "&" if "?" in callback else "?"
                q = {"denied": token} if api.deny else {"oauth_token": token, "oauth_verifier": verifier}
                return self._send(302, b"", location=f"{callback}{sep}{urlencode(q)}")
            if path == "/oauth/access_token" and self.command == "POST":
                entry = api.temporary.get(req.token or "")
                if entry is None or not api.check(req, entry[0]):
                    return self._send(401, b"oauth_problem=signature_invalid", "application/x-www-form-urlencoded")
                if req.oauth_params.get("oauth_verifier") != entry[3]:
                    return self._send(401, b"oauth_problem=verifier_invalid", "application/x-www-form-urlencoded")
                del api.temporary[req.token or ""]
                token, secret = "at_" + secrets.token_urlsafe(12), secrets.token_urlsafe(16)
                api.tokens[token] = (secret, "user-" + token[-4:])
                body = urlencode({"oauth_token": token, "oauth_token_secret": secret, "user_id": api.tokens[token][1]})
                return self._send(200, body.encode(), "application/x-www-form-urlencoded")
            if path.startswith("/api/"):
                entry = api.tokens.get(req.token or "")
                ok = entry is not None and api.check(req, entry[0])
                api.seen.append((self.command, self.path, 200 if ok else 401))
                if not ok or entry is None:
                    return self._send(401, b'{"error":"invalid_signature"}')
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()} if is_form else None
                return self._send(200, json.dumps({"who": entry[1], "path": path, "form": form}).encode())
            return self._send(404, b'{"error":"not_found"}')

        do_GET = do_POST = do_PUT = do_DELETE = _any  # noqa: N815

        def log_message(self, *args: Any) -> None:
            return

    api.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=api.server.serve_forever, daemon=True).start()


@pytest.fixture
def oauth1_api() -> Iterator[OAuth1Api]:
    api = OAuth1Api()
    _serve(api)
    try:
        yield api
    finally:
        assert api.server is not None
        api.server.shutdown()
        api.server.server_close()
