"""A small local API that checks credentials the way providers document them.

* ``/bearer/...``: ``Authorization: Bearer <key>`` (Stripe, OpenAI: RFC 6750 2.1);
* ``/header/...``: a named header ``X-API-Key: <key>`` (SendGrid-style custom header);
* ``/query/...``: a query parameter ``?api_key=<key>`` (RFC 6750 2.3 style, many APIs);
* ``/basic/...``: ``Authorization: Basic base64(user:password)`` (RFC 7617; Twilio, Jira).

A known credential answers 200 with a small JSON body; anything else 401 with
``WWW-Authenticate``. Every request is recorded (method, path, query, headers) so a test
can check what the vault sent.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = ["CredApi", "Seen", "cred_api"]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


@dataclass
class CredApi:
    keys: set[str] = field(default_factory=set)
    logins: set[tuple[str, str]] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _check(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, str]:
        first = path.strip("/").split("/", 1)[0]
        auth = headers.get("authorization", "")
        if first == "bearer":
            scheme, _, cred = auth.partition(" ")
            return (200, "key") if scheme == "Bearer" and cred in self.keys else (401, "Bearer")
        if first == "header":
            return (200, "key") if headers.get("x-api-key") in self.keys else (401, "ApiKey")
        if first == "query":
            values = query.get("api_key", [])
            return (200, "key") if len(values) == 1 and values[0] in self.keys else (401, "ApiKey")
        if first == "basic":
            scheme, _, cred = auth.partition(" ")
            if scheme != "Basic":
                return 401, 'Basic realm="test"'
            try:
                user, sep, password = base64.b64decode(cred, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return 401, 'Basic realm="test"'
            ok = sep and (user, password) in self.logins
            return (200, user) if ok else (401, 'Basic realm="test"')
        return 404, ""


def _serve(api: CredApi) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, who = api._check(parts.path, query, headers)
            api.seen.append(Seen(self.command, parts.path, query, headers, status))
            body: dict[str, Any]
            if status == 200:
                body = {"ok": True, "path": parts.path, "who": who}
            else:
                body = {"error": "unauthorized" if status == 401 else "not_found"}
            raw = json.dumps(body).encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", who)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any  # noqa: N815

        def log_message(self, *args: Any) -> None:
            return

    api.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=api.server.serve_forever, daemon=True).start()


@pytest.fixture
def cred_api() -> Iterator[CredApi]:
    api = CredApi()
    _serve(api)
    try:
        yield api
    finally:
        assert api.server is not None
        api.server.shutdown()
        api.server.server_close()
