"""Audit trail: who (API key id) did what to which grant, when. Never a token value."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store import audit as store

__all__ = ["record"]


async def record(
    conn: AsyncConnection,
    *,
    environment_id: str,
    actor: str,
    action: str,
    now: float,
    grant_id: str | None = None,
    integration_id: str | None = None,
    **detail: Any,
) -> None:
    """Append an event in the caller's transaction (so it commits with the change it describes)."""
    await store.append(
        conn,
        environment_id=environment_id,
        actor=actor,
        action=action,
        now=now,
        grant_id=grant_id,
        integration_id=integration_id,
        detail=detail,
    )
