"""Test doubles for the SDK tests: a fake vault that speaks the v1 contract
(served through httpx.MockTransport) and a recording sleep."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx

API_KEY = "gk_test_Sup3rS3cretKeyValue"
BASE_URL = "http://vault.test"
NOW = "2026-05-01T12:00:00Z"

Handler = Callable[[httpx.Request], httpx.Response]


def problem(
    status: int, code: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    body = {
        "type": f"https://grantkeeper.dev/problems/{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail or code,
        "code": code,
        **extra,
    }
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json", **(headers or {})},
    )


def grant_json(grant_id: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": grant_id,
        "integration_id": "google-mail",
        "provider": "google",
        "user_id": "user-1",
        "provider_account_id": "acct-1",
        "status": "active",
        "scopes": ["openid", "email"],
        "access_token_expires_at": "2026-05-01T13:00:00Z",
        "has_refresh_token": True,
        "last_refreshed_at": "2026-05-01T12:00:00+00:00",
        "created_at": NOW,
        "updated_at": NOW,
    }
    data.update(overrides)
    return data


class FakeVault:
    """In-memory emulation of the vault API, enough for the SDK's unit tests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.grants: dict[str, dict[str, Any]] = {}
        self.integrations: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.exported: set[str] = set()
        self.token_counter = itertools.count(1)
        self.current_token: dict[str, str] = {}
        self.token_lifetime = 3600
        self.token_calls: list[dict[str, Any]] = []
        #: Responses (or exceptions) served before normal handling, in order.
        self.queued: list[httpx.Response | Exception] = []

    # -- helpers for tests ---------------------------------------------------

    def add_grant(self, grant_id: str | None = None, **overrides: Any) -> str:
        grant_id = grant_id or str(uuid.uuid4())
        self.grants[grant_id] = grant_json(grant_id, **overrides)
        return grant_id

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]

    # -- transport -------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.queued:
            item = self.queued.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return problem(401, "unauthorized", "missing or invalid API key")
        body: Any = json.loads(request.content) if request.content else None
        for pattern, method, handler in self.routes:
            match = re.fullmatch(pattern, request.url.path)
            if match and request.method == method:
                return handler(self, request, body, *match.groups())
        return problem(404, "not_found", "no such route")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    # -- routes ----------------------------------------------------------------

    def list_providers(self, request: httpx.Request, body: Any) -> httpx.Response:
        data: list[dict[str, Any]] = [
            {
                "name": "google",
                "display_name": "Google",
                "auth_mode": "oauth2",
                "categories": ["productivity"],
                "docs_url": "https://developers.google.com",
            },
            {
                "name": "oidc",
                "display_name": "OpenID Connect",
                "auth_mode": "oauth2",
                "categories": [],
                "docs_url": None,
            },
        ]
        category = request.url.params.get("category")
        if category:
            data = [p for p in data if category in p["categories"]]
        return httpx.Response(200, json={"data": data})

    def get_provider(self, request: httpx.Request, body: Any, name: str) -> httpx.Response:
        if name != "google":
            return problem(404, "provider_not_found")
        return httpx.Response(
            200,
            json={
                "name": "google",
                "display_name": "Google",
                "auth_mode": "oauth2",
                "categories": ["productivity"],
                "docs_url": None,
                "api_base_url": "https://www.googleapis.com",
            },
        )

    def put_integration(self, request: httpx.Request, body: Any, iid: str) -> httpx.Response:
        created = iid not in self.integrations
        data = {k: v for k, v in body.items() if k != "client_secret"}
        data.update(
            id=iid,
            client_secret_set="client_secret" in body,
            callback_url="http://vault.test/oauth/callback",
            token_export=body.get("token_export", "never"),
            created_at=NOW,
            updated_at=NOW,
        )
        self.integrations[iid] = data
        return httpx.Response(201 if created else 200, json=data)

    def get_integration(self, request: httpx.Request, body: Any, iid: str) -> httpx.Response:
        if iid not in self.integrations:
            return problem(404, "integration_not_found")
        return httpx.Response(200, json=self.integrations[iid])

    def list_integrations(self, request: httpx.Request, body: Any) -> httpx.Response:
        return httpx.Response(200, json={"data": list(self.integrations.values())})

    def delete_integration(self, request: httpx.Request, body: Any, iid: str) -> httpx.Response:
        if any(g["integration_id"] == iid for g in self.grants.values()):
            return problem(409, "integration_in_use", "grants still use this integration")
        self.integrations.pop(iid, None)
        return httpx.Response(204)

    def create_session(self, request: httpx.Request, body: Any) -> httpx.Response:
        if not body["return_to"].startswith("https://app.example/"):
            return problem(422, "return_to_not_allowed", "return_to is not allowed")
        sid = str(uuid.uuid4())
        self.sessions[sid] = {"id": sid, "status": "pending"}
        return httpx.Response(
            201,
            json={
                "id": sid,
                "connect_url": f"http://vault.test/connect/{sid}",
                "expires_at": "2026-05-01T12:10:00Z",
            },
        )

    def get_session(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        if sid not in self.sessions:
            return problem(404, "connect_session_not_found")
        return httpx.Response(200, json=self.sessions[sid])

    def export_tokens(self, request: httpx.Request, body: Any, sid: str) -> httpx.Response:
        if sid in self.exported:
            return problem(410, "tokens_already_retrieved")
        self.exported.add(sid)
        return httpx.Response(
            200,
            headers={"cache-control": "no-store"},
            json={
                "access_token": "ya29.exported",
                "refresh_token": "1//refresh-exported",
                "expires_at": "2026-05-01T13:00:00Z",
                "scopes": ["email"],
            },
        )

    def list_grants(self, request: httpx.Request, body: Any) -> httpx.Response:
        params = request.url.params
        limit = int(params.get("limit", 10))
        offset = int(params.get("offset", 0))
        if not 1 <= limit <= 200:
            return problem(422, "validation_error", "limit must be 1..200")
        rows = [
            g
            for g in self.grants.values()
            if all(
                params.get(key) in (None, g[key]) for key in ("integration_id", "user_id", "status")
            )
        ]
        page = rows[offset : offset + limit]
        next_offset = offset + limit if offset + limit < len(rows) else None
        return httpx.Response(
            200, json={"data": page, "limit": limit, "offset": offset, "next_offset": next_offset}
        )

    def get_grant(self, request: httpx.Request, body: Any, gid: str) -> httpx.Response:
        if gid not in self.grants:
            return problem(404, "grant_not_found")
        return httpx.Response(200, json=self.grants[gid])

    def import_grant(self, request: httpx.Request, body: Any) -> httpx.Response:
        if body.get("verify", True) and body["refresh_token"] == "bad":
            return problem(422, "refresh_token_rejected", "the provider refused the refresh token")
        gid = self.add_grant(integration_id=body["integration_id"], user_id=body["user_id"])
        return httpx.Response(201, json=self.grants[gid])

    def grant_token(self, request: httpx.Request, body: Any, gid: str) -> httpx.Response:
        self.token_calls.append(body or {})
        grant = self.grants.get(gid)
        if grant is None:
            return problem(404, "grant_not_found")
        if grant["status"] == "revoked":
            return problem(409, "grant_revoked", "the grant was revoked")
        if grant["status"] == "invalid":
            return problem(
                409,
                "grant_invalid",
                "refresh failed: invalid_grant",
                failure={"code": "invalid_grant", "description": "Token expired", "at": NOW},
            )
        if (body or {}).get("force_refresh") or gid not in self.current_token:
            self.current_token[gid] = f"at-{next(self.token_counter)}"
        return httpx.Response(
            200,
            headers={"cache-control": "no-store"},
            json={
                "access_token": self.current_token[gid],
                "token_type": "Bearer",
                "expires_at": "2026-05-01T13:00:00Z",
                "expires_in": self.token_lifetime,
                "scopes": grant["scopes"],
                "grant_id": gid,
            },
        )

    def reconnect(self, request: httpx.Request, body: Any, gid: str) -> httpx.Response:
        return self.create_session(request, {"return_to": body["return_to"]})

    def delete_grant(self, request: httpx.Request, body: Any, gid: str) -> httpx.Response:
        if gid not in self.grants:
            return problem(404, "grant_not_found")
        self.grants[gid]["status"] = "revoked"
        return httpx.Response(
            200, json={"id": gid, "status": "revoked", "provider_revocation": "succeeded"}
        )

    def create_webhook(self, request: httpx.Request, body: Any) -> httpx.Response:
        wid = str(uuid.uuid4())
        self.webhooks[wid] = {"id": wid, "url": body["url"], "events": body["events"]}
        return httpx.Response(201, json={**self.webhooks[wid], "secret": "whsec_c2VjcmV0"})

    def list_webhooks(self, request: httpx.Request, body: Any) -> httpx.Response:
        return httpx.Response(200, json={"data": list(self.webhooks.values())})

    def get_webhook(self, request: httpx.Request, body: Any, wid: str) -> httpx.Response:
        if wid not in self.webhooks:
            return problem(404, "webhook_endpoint_not_found")
        return httpx.Response(200, json=self.webhooks[wid])

    def delete_webhook(self, request: httpx.Request, body: Any, wid: str) -> httpx.Response:
        self.webhooks.pop(wid, None)
        return httpx.Response(204)

    def audit_events(self, request: httpx.Request, body: Any) -> httpx.Response:
        events = [
            {
                "id": "ev-1",
                "action": "grant.token_issued",
                "grant_id": request.url.params.get("grant_id"),
                "api_key_id": "key-1",
                "at": NOW,
            }
        ]
        return httpx.Response(
            200, json={"data": events, "limit": 10, "offset": 0, "next_offset": None}
        )

    def proxy(self, request: httpx.Request, body: Any, gid: str, path: str) -> httpx.Response:
        grant = self.grants.get(gid)
        if grant is None:
            return problem(404, "grant_not_found")
        if grant["status"] == "invalid":
            return problem(409, "grant_invalid", failure={"code": "invalid_grant", "at": NOW})
        if path == "missing":
            return httpx.Response(404, json={"error": "not found at provider"})
        return httpx.Response(
            200,
            json={
                "method": request.method,
                "path": path,
                "query": str(request.url.query, "ascii"),
                "body": body,
            },
        )

    routes: list[tuple[str, str, Callable[..., httpx.Response]]] = [
        (r"/v1/providers", "GET", list_providers),
        (r"/v1/providers/([^/]+)", "GET", get_provider),
        (r"/v1/integrations", "GET", list_integrations),
        (r"/v1/integrations/([^/]+)", "PUT", put_integration),
        (r"/v1/integrations/([^/]+)", "GET", get_integration),
        (r"/v1/integrations/([^/]+)", "DELETE", delete_integration),
        (r"/v1/connect/sessions", "POST", create_session),
        (r"/v1/connect/sessions/([^/]+)", "GET", get_session),
        (r"/v1/connect/sessions/([^/]+)/tokens", "POST", export_tokens),
        (r"/v1/grants", "GET", list_grants),
        (r"/v1/grants", "POST", import_grant),
        (r"/v1/grants/([^/]+)", "GET", get_grant),
        (r"/v1/grants/([^/]+)", "DELETE", delete_grant),
        (r"/v1/grants/([^/]+)/token", "POST", grant_token),
        (r"/v1/grants/([^/]+)/reconnect", "POST", reconnect),
        (r"/v1/webhook-endpoints", "POST", create_webhook),
        (r"/v1/webhook-endpoints", "GET", list_webhooks),
        (r"/v1/webhook-endpoints/([^/]+)", "GET", get_webhook),
        (r"/v1/webhook-endpoints/([^/]+)", "DELETE", delete_webhook),
        (r"/v1/audit-events", "GET", audit_events),
    ]
    for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        routes.append((r"/v1/proxy/([^/]+)/(.*)", _method, proxy))
    del _method


class Sleeps(list[float]):
    """A recording stand-in for time.sleep / anyio.sleep."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)
