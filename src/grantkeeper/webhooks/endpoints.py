"""Webhook endpoint management; the signing secret is shown once and stored sealed."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper import audit
from grantkeeper.apikeys import Principal
from grantkeeper.clock import iso
from grantkeeper.errors import NotFound
from grantkeeper.inputs import CreateWebhookEndpoint
from grantkeeper.netguard import check_url
from grantkeeper.runtime import Runtime
from grantkeeper.store import webhooks as store
from grantkeeper.vault import aad_for
from grantkeeper.webhooks.signing import new_secret

__all__ = [
    "create_endpoint",
    "delete_endpoint",
    "endpoint_view",
    "get_endpoint",
    "secret_aad",
    "visible_endpoint",
]


def secret_aad(environment_id: str, endpoint_id: str) -> bytes:
    return aad_for(environment_id, "webhook_endpoints", endpoint_id, "secret")


def endpoint_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "events": list(row["events"]),
        "created_at": iso(row["created_at"]),
    }


def _valid_id(endpoint_id: str) -> str:
    try:
        return str(uuid.UUID(endpoint_id))
    except ValueError:
        raise NotFound("no such webhook endpoint") from None


async def create_endpoint(
    conn: AsyncConnection, rt: Runtime, principal: Principal, body: CreateWebhookEndpoint
) -> dict[str, Any]:
    url = check_url(
        body.url,
        allow_private=rt.settings.allow_private_networks,
        what="webhook URL",
        require_https=not rt.settings.allow_private_networks,
    )
    endpoint_id = str(uuid.uuid4())
    secret = new_secret()
    now = rt.clock.now()
    row = {
        "id": endpoint_id,
        "environment_id": principal.environment_id,
        "url": url,
        "events": list(dict.fromkeys(body.events)),
        # a key limited to some integrations makes an endpoint that hears only them
        "integration_ids": sorted(principal.integration_ids)
        if principal.integration_ids is not None
        else None,
        "secret_ct": rt.vault.seal(secret, secret_aad(principal.environment_id, endpoint_id)),
        "created_at": now,
    }
    await store.insert_endpoint(conn, row)
    await audit.record(
        conn,
        environment_id=principal.environment_id,
        actor=principal.actor,
        action="webhook_endpoint.created",
        now=now,
        endpoint_id=endpoint_id,
    )
    return {**endpoint_view(row), "secret": secret}


async def visible_endpoint(
    conn: AsyncConnection, principal: Principal, endpoint_id: str
) -> dict[str, Any]:
    """The endpoint if this key may see it (404 alike for another key's scope)."""
    row = await store.get_endpoint(conn, principal.environment_id, _valid_id(endpoint_id))
    if row is None or not store.endpoint_visible(row, principal.integration_ids):
        raise NotFound("no such webhook endpoint")
    return row


async def get_endpoint(
    conn: AsyncConnection, principal: Principal, endpoint_id: str
) -> dict[str, Any]:
    row = await visible_endpoint(conn, principal, endpoint_id)
    deliveries = await store.list_deliveries(conn, principal.environment_id, row["id"], limit=20)
    view = endpoint_view(row)
    view["recent_deliveries"] = [
        {
            "id": d["id"],
            "event_id": d["event_id"],
            "type": d["type"],
            "status": d["status"],
            "attempts": d["attempts"],
            "last_status": d["last_status"],
            "last_error": d["last_error"],
            "created_at": iso(d["created_at"]),
            "delivered_at": iso(d["delivered_at"]),
            "next_attempt_at": iso(d["next_attempt_at"]),
        }
        for d in deliveries
    ]
    return view


async def delete_endpoint(
    conn: AsyncConnection, rt: Runtime, principal: Principal, endpoint_id: str
) -> None:
    now = rt.clock.now()
    await visible_endpoint(conn, principal, endpoint_id)
    if not await store.delete_endpoint(conn, principal.environment_id, _valid_id(endpoint_id), now):
        raise NotFound("no such webhook endpoint")
    await audit.record(
        conn,
        environment_id=principal.environment_id,
        actor=principal.actor,
        action="webhook_endpoint.deleted",
        now=now,
        endpoint_id=endpoint_id,
    )
