"""One place that turns "the provider no longer honours this grant" into state and events."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper import audit, events
from grantkeeper.grants import grant_view
from grantkeeper.store import grants as grant_store
from grantkeeper.store import signals as store
from grantkeeper.store.records import GrantRecord

__all__ = ["revoked_at_provider"]


async def revoked_at_provider(
    conn: AsyncConnection, rec: GrantRecord, *, reason: str, actor: str, now: float
) -> bool:
    """Mark an active grant ``invalid`` (``revoked_at_provider``), destroy its secrets, and
    queue one ``grant.invalid``, in the caller's transaction. False: it was not active."""
    if not await store.mark_revoked_at_provider(conn, rec, reason=reason, now=now):
        return False
    fresh = await grant_store.get(conn, rec.environment_id, rec.id)
    assert fresh is not None
    await events.emit(
        conn,
        environment_id=rec.environment_id,
        event_type="grant.invalid",
        grant=grant_view(fresh),
        now=now,
    )
    await audit.record(
        conn,
        environment_id=rec.environment_id,
        actor=actor,
        action="grant.invalid",
        now=now,
        grant_id=rec.id,
        integration_id=rec.integration_id,
        failure_code="revoked_at_provider",
        reason=reason[:200],
    )
    return True
