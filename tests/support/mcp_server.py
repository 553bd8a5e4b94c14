"""A small remote MCP server (streamable HTTP) that is an OAuth protected resource.

It behaves the way the MCP authorization specification and RFC 9728 describe a server:

- serves protected resource metadata for each endpoint (``/mcp`` and ``/other/mcp``) at
  ``/prm/...`` (named in the 401's ``WWW-Authenticate`` ``resource_metadata``) and, unless
  switched off, at the RFC 9728 well-known URL;
- answers requests without a valid token with 401 and that challenge;
- accepts only JWT access tokens from its authorization server (signature by the
  issuer's JWKS, ``iss``, ``exp``) whose ``aud`` is the endpoint itself (RFC 8707);
- speaks enough MCP: ``initialize`` (answers an ``Mcp-Session-Id``), later requests must
  carry it; ``tools/call`` answers as server-sent events when the client accepts them;
  a GET opens a server-sent event stream.

Knobs on the instance let tests break one rule at a time (a wrong ``resource`` in the
metadata, a foreign authorization server, no challenge parameter, ...).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

ENDPOINTS = ("/mcp", "/other/mcp")


@dataclass
class Seen:
    method: str
    path: str
    status: int
    rpc_method: str | None = None
    session_id: str | None = None
    authorization: str | None = None
    body_bytes: int = 0


@dataclass
class McpKnobs:
    #: authorization servers listed in the metadata (None: the real issuer)
    authorization_servers: list[str] | None = None
    #: the metadata's ``resource`` (None: the endpoint's own URL)
    resource_override: str | None = None
    #: name the metadata URL in the 401 challenge
    advertise_metadata: bool = True
    #: serve the metadata at the RFC 9728 well-known URL too
    serve_well_known: bool = True
    #: scope in the 401 challenge (None: no scope parameter)
    challenge_scope: str | None = None
    #: a fake authorization server's metadata served at /.well-known/oauth-authorization-server/fake-as
    fake_as_metadata: dict[str, Any] | None = None
    scopes_supported: list[str] = field(default_factory=lambda: ["mcp:tools"])
    #: answer this many otherwise valid tokens with 401 invalid_token (a token revoked early)
    reject_valid_tokens: int = 0


class McpServer:
    def __init__(self, issuer: str, jwks_uri: str) -> None:
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.knobs = McpKnobs()
        self.seen: list[Seen] = []
        self.sessions: set[str] = set()
        self._jwks: KeySet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> McpServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="mcp-test-server")
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("the MCP test server did not start")
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def reset(self) -> None:
        self.knobs = McpKnobs()
        self.seen.clear()

    # ------------------------------------------------------------------ addresses

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    @property
    def other_url(self) -> str:
        return self.base + "/other/mcp"

    def metadata_url(self, endpoint: str = "/mcp") -> str:
        return self.base + "/prm" + endpoint

    @property
    def fake_issuer(self) -> str:
        return self.base + "/fake-as"

    # ------------------------------------------------------------------ handlers

    def _metadata(self, endpoint: str) -> dict[str, Any]:
        k = self.knobs
        return {
            "resource": k.resource_override or self.base + endpoint,
            "authorization_servers": k.authorization_servers or [self.issuer],
            "scopes_supported": k.scopes_supported,
            "bearer_methods_supported": ["header"],
        }

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path.startswith("/prm/"):
            endpoint = path[len("/prm") :]
            if endpoint in ENDPOINTS:
                return web.json_response(self._metadata(endpoint))
        if request.method == "GET" and path.startswith("/.well-known/oauth-protected-resource/"):
            endpoint = path[len("/.well-known/oauth-protected-resource") :]
            if endpoint in ENDPOINTS and self.knobs.serve_well_known:
                return web.json_response(self._metadata(endpoint))
        if path == "/.well-known/oauth-authorization-server/fake-as" and self.knobs.fake_as_metadata:
            return web.json_response(self.knobs.fake_as_metadata)
        if path in ENDPOINTS:
            return await self._mcp(request, path)
        return web.json_response({"error": "not_found"}, status=404)

    def _challenge(self, endpoint: str, error: str | None) -> str:
        parts = []
        if self.knobs.advertise_metadata:
            parts.append(f'resource_metadata="{self.metadata_url(endpoint)}"')
        if self.knobs.challenge_scope:
            parts.append(f'scope="{self.knobs.challenge_scope}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ", ".join(parts) if parts else "Bearer"

    async def _keys(self, force: bool = False) -> KeySet:
        if self._jwks is None or force:
            async with aiohttp.ClientSession() as http, http.get(self.jwks_uri) as resp:
                self._jwks = KeySet.import_key_set(await resp.json())
        return self._jwks

    async def _claims(self, token: str, endpoint: str) -> dict[str, Any] | None:
        try:
            try:
                decoded = jwt.decode(token, await self._keys(), algorithms=["RS256"])
            except JoseError:
                decoded = jwt.decode(token, await self._keys(force=True), algorithms=["RS256"])
        except (JoseError, ValueError):
            return None
        claims = dict(decoded.claims)
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if claims.get("iss") != self.issuer or self.base + endpoint not in auds:
            return None
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= time.time():
            return None
        return claims

    async def _mcp(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        raw = await request.read()
        authz = request.headers.get("Authorization")
        session = request.headers.get("Mcp-Session-Id")
        rpc: dict[str, Any] = {}
        if raw:
            try:
                parsed = json.loads(raw)
                rpc = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                rpc = {}
        seen = Seen(request.method, endpoint, 0, rpc.get("method"), session, authz, len(raw))
        self.seen.append(seen)
        token = authz[7:].strip() if authz and authz[:7].lower() == "bearer " else None
        claims = await self._claims(token, endpoint) if token else None
        if claims is not None and self.knobs.reject_valid_tokens > 0:
            self.knobs.reject_valid_tokens -= 1
            claims = None
        if claims is None:
            seen.status = 401
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={
                    "WWW-Authenticate": self._challenge(endpoint, "invalid_token" if token else None)
                },
            )
        if request.method == "GET":
            seen.status = 200
            return await self._sse(request, [{"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": i}} for i in range(3)])
        if request.method == "DELETE":
            self.sessions.discard(session or "")
            seen.status = 204
            return web.Response(status=204)
        method = rpc.get("method")
        if method == "initialize":
            sid = uuid.uuid4().hex
            self.sessions.add(sid)
            seen.status = 200
            return web.json_response(
                {
                    "jsonrpc": "2.0",
                    "id": rpc.get("id"),
                    "result": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "test-mcp", "version": "1"},
                    },
                },
                headers={"Mcp-Session-Id": sid},
            )
        if not session:
            seen.status = 400
            return web.json_response({"error": "missing Mcp-Session-Id"}, status=400)
        if session not in self.sessions:
            seen.status = 404
            return web.json_response({"error": "unknown session"}, status=404)
        if method == "notifications/initialized":
            seen.status = 202
            return web.Response(status=202)
        if method == "tools/list":
            seen.status = 200
            return web.json_response(
                {"jsonrpc": "2.0", "id": rpc.get("id"), "result": {"tools": [{"name": "whoami", "inputSchema": {"type": "object"}}]}}
            )
        if method == "tools/call":
            result = {
                "jsonrpc": "2.0",
                "id": rpc.get("id"),
                "result": {
                    "content": [{"type": "text", "text": json.dumps({"sub": claims.get("sub"), "aud": claims.get("aud"), "session": session, "request_bytes": len(raw)})}],
                    "isError": False,
                },
            }
            seen.status = 200
            if "text/event-stream" in request.headers.get("Accept", ""):
                progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1, "total": 2}}
                return await self._sse(request, [progress, result])
            return web.json_response(result)
        seen.status = 400
        return web.json_response({"jsonrpc": "2.0", "id": rpc.get("id"), "error": {"code": -32601, "message": "unknown method"}}, status=200)

    async def _sse(self, request: web.Request, messages: list[dict[str, Any]]) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i, message in enumerate(messages):
            await resp.write(f"id: {i}\nevent: message\ndata: {json.dumps(message)}\n\n".encode())
            await asyncio.sleep(0.3)
        await resp.write_eof()
        return resp


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON data of each event of a server-sent event stream."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


@pytest.fixture(scope="session")
def mcp_server_factory() -> Iterator[list[McpServer]]:
    started: list[McpServer] = []
    yield started
    for server in started:
        server.stop()
