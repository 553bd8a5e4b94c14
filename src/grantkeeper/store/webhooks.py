"""Webhook endpoints, the outbox of events, and their deliveries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import webhook_deliveries, webhook_endpoints, webhook_events

__all__ = [
    "claim_deliveries",
    "delete_endpoint",
    "endpoint_visible",
    "enqueue",
    "get_endpoint",
    "insert_endpoint",
    "list_deliveries",
    "list_endpoints",
    "record_attempt",
]


async def insert_endpoint(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(insert(webhook_endpoints).values(**values))


async def get_endpoint(
    conn: AsyncConnection, environment_id: str, endpoint_id: str
) -> dict[str, Any] | None:
    r = await conn.execute(
        select(webhook_endpoints).where(
            webhook_endpoints.c.environment_id == environment_id,
            webhook_endpoints.c.id == endpoint_id,
            webhook_endpoints.c.deleted_at.is_(None),
        )
    )
    row = r.mappings().first()
    return dict(row) if row is not None else None


async def list_endpoints(
    conn: AsyncConnection,
    environment_id: str,
    visible_to: frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """The environment's live endpoints; with ``visible_to`` (a key's integrations) only
    those scoped to a subset of them."""
    r = await conn.execute(
        select(webhook_endpoints)
        .where(
            webhook_endpoints.c.environment_id == environment_id,
            webhook_endpoints.c.deleted_at.is_(None),
        )
        # id breaks ties: with the (environment_id, id) index the scan order is no longer
        # insertion order, and a list must not reshuffle between two calls
        .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
    )
    rows = [dict(m) for m in r.mappings().all()]
    if visible_to is not None:
        rows = [row for row in rows if endpoint_visible(row, visible_to)]
    return rows


def endpoint_visible(row: dict[str, Any], visible_to: frozenset[str] | None) -> bool:
    """May a key limited to ``visible_to`` (None: unlimited) see this endpoint?"""
    if visible_to is None:
        return True
    scoped = row["integration_ids"]
    return scoped is not None and set(scoped) <= visible_to


async def delete_endpoint(
    conn: AsyncConnection, environment_id: str, endpoint_id: str, now: float
) -> bool:
    r = await conn.execute(
        update(webhook_endpoints)
        .where(
            webhook_endpoints.c.environment_id == environment_id,
            webhook_endpoints.c.id == endpoint_id,
            webhook_endpoints.c.deleted_at.is_(None),
        )
        .values(deleted_at=now)
    )
    if r.rowcount:
        # nothing more goes out to a deleted endpoint
        await conn.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.status == "pending",
            )
            .values(status="failed", last_error="endpoint deleted", next_attempt_at=None)
        )
    return r.rowcount > 0


async def enqueue(
    conn: AsyncConnection,
    *,
    event_id: str,
    environment_id: str,
    event_type: str,
    grant_id: str | None,
    payload: dict[str, Any],
    now: float,
    integration_id: str | None = None,
) -> int:
    """Write the event and one pending delivery per subscribed endpoint, in the caller's transaction."""
    await conn.execute(
        insert(webhook_events).values(
            id=event_id,
            environment_id=environment_id,
            type=event_type,
            grant_id=grant_id,
            payload=payload,
            created_at=now,
        )
    )
    eps = await list_endpoints(conn, environment_id)
    targets = [
        e["id"]
        for e in eps
        if (event_type in e["events"] or "*" in e["events"])
        # an endpoint made by a key limited to some integrations hears only theirs
        and (e["integration_ids"] is None or integration_id in e["integration_ids"])
    ]
    if targets:
        await conn.execute(
            insert(webhook_deliveries),
            [
                {
                    "event_id": event_id,
                    "endpoint_id": ep,
                    "environment_id": environment_id,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for ep in targets
            ],
        )
    return len(targets)


async def claim_deliveries(
    conn: AsyncConnection, now: float, until: float, limit: int
) -> list[dict[str, Any]]:
    """Due deliveries joined with their event and endpoint, leased to the caller."""
    due = and_(
        webhook_deliveries.c.status == "pending",
        webhook_deliveries.c.next_attempt_at <= now,
        or_(webhook_deliveries.c.lease_until.is_(None), webhook_deliveries.c.lease_until < now),
    )
    sub = (
        select(webhook_deliveries.c.id)
        .where(due)
        .order_by(webhook_deliveries.c.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        sub = sub.with_for_update(skip_locked=True)
    ids = [r[0] for r in (await conn.execute(sub)).all()]
    if not ids:
        return []
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id.in_(ids), due)
        .values(lease_until=until)
    )
    r = await conn.execute(
        select(
            webhook_deliveries.c.id,
            webhook_deliveries.c.attempts,
            webhook_deliveries.c.environment_id,
            webhook_deliveries.c.endpoint_id,
            webhook_events.c.id.label("event_id"),
            webhook_events.c.payload,
            webhook_events.c.created_at.label("event_created_at"),
            webhook_endpoints.c.url,
            webhook_endpoints.c.secret_ct,
        )
        .join(webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id)
        .join(webhook_endpoints, webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id)
        .where(webhook_deliveries.c.id.in_(ids), webhook_deliveries.c.lease_until == until)
    )
    return [dict(m) for m in r.mappings().all()]


async def record_attempt(
    conn: AsyncConnection,
    delivery_id: int,
    *,
    status: str,
    attempts: int,
    next_attempt_at: float | None,
    last_status: int | None,
    last_error: str | None,
    delivered_at: float | None,
) -> None:
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery_id)
        .values(
            status=status,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            lease_until=None,
            last_status=last_status,
            last_error=last_error,
            delivered_at=delivered_at,
        )
    )


async def list_deliveries(
    conn: AsyncConnection, environment_id: str, endpoint_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    q = (
        select(webhook_deliveries, webhook_events.c.type)
        .join(webhook_events, webhook_events.c.id == webhook_deliveries.c.event_id)
        .where(webhook_deliveries.c.environment_id == environment_id)
    )
    if endpoint_id is not None:
        q = q.where(webhook_deliveries.c.endpoint_id == endpoint_id)
    r = await conn.execute(q.order_by(webhook_deliveries.c.id.desc()).limit(limit))
    return [dict(m) for m in r.mappings().all()]
