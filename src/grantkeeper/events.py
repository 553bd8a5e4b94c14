"""Webhook events, written to the outbox in the caller's transaction."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.clock import iso
from grantkeeper.store import webhooks as store

__all__ = ["EVENT_TYPES", "emit"]

EVENT_TYPES = (
    "grant.created",
    "grant.updated",
    "grant.invalid",
    "grant.recovered",
    "grant.deleted",
    "grant.expiring",
)


async def emit(
    conn: AsyncConnection,
    *,
    environment_id: str,
    event_type: str,
    grant: dict[str, Any],
    now: float,
    data: dict[str, Any] | None = None,
) -> str:
    """Queue ``event_type`` with the grant's public view (and ``data`` beside it, e.g.
    ``expires_at`` of ``grant.expiring``); returns the event (message) id."""
    assert event_type in EVENT_TYPES
    event_id = "msg_" + secrets.token_hex(12)
    payload = {"type": event_type, "timestamp": iso(now), "data": {**(data or {}), "grant": grant}}
    await store.enqueue(
        conn,
        event_id=event_id,
        environment_id=environment_id,
        event_type=event_type,
        grant_id=grant.get("id"),
        payload=payload,
        now=now,
        integration_id=grant.get("integration_id"),
    )
    return event_id
