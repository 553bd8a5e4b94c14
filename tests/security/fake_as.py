"""A scriptable OAuth token endpoint for what the real oidc-provider cannot be made to do:
omit ``refresh_token`` on refresh (RFC 6749 6) or echo secrets back in its errors."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest


@dataclass
class FakeAS:
    server: http.server.ThreadingHTTPServer
    requests: list[dict[str, str]] = field(default_factory=list)
    #: queued (status, json body) answers; when empty: a fresh access token, no refresh token
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def integration(self, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "provider": "oauth2",
            "client_id": "fake-client",
            "client_secret": "fake-client-secret-8f1c2e",
            "scopes": ["read"],
            "return_urls": ["https://app.example/done"],
            "endpoints": {
                "authorization_url": self.base + "/authorize",
                "token_url": self.base + "/token",
                "revocation_url": self.base + "/revoke",
            },
        }
        body.update(extra)
        return body


@pytest.fixture
def fake_as() -> Iterator[FakeAS]:
    holder: list[FakeAS] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            fake = holder[0]
            n = int(self.headers.get("content-length", "0"))
            form = dict(parse_qsl(self.rfile.read(n).decode()))
            form["_path"] = self.path
            form["_authorization"] = self.headers.get("authorization", "")
            fake.requests.append(form)
            if self.path.startswith("/revoke"):
                status, body = 200, {}
            elif fake.answers:
                status, body = fake.answers.pop(0)
            else:
                token = f"fake-at-{len(fake.requests)}-d41d8cd98f"
                fake.issued.append(token)
                status, body = 200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(FakeAS(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
