"""Rows of the lifecycle signals: provider notifications seen, revocations, health probes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store._rows import to_record
from grantkeeper.store.records import GrantRecord
from grantkeeper.store.tables import grants, integrations, provider_event_ids

__all__ = [
    "active_grants_for_accounts",
    "claim_probe",
    "due_probes",
    "first_sighting",
    "mark_revoked_at_provider",
    "purge_event_ids",
    "schedule_probes",
    "stop_probes",
    "unscheduled_probe_grants",
]


async def first_sighting(
    conn: AsyncConnection,
    environment_id: str,
    integration_id: str,
    event_id: str,
    *,
    expires_at: float,
) -> bool:
    """Remember a notification's id; False when it was seen before (a replay)."""
    values = {
        "environment_id": environment_id,
        "integration_id": integration_id,
        "event_id": event_id[:255],
        "expires_at": expires_at,
    }
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    r = await conn.execute(ins(provider_event_ids).values(**values).on_conflict_do_nothing())
    return r.rowcount == 1


async def purge_event_ids(conn: AsyncConnection, now: float) -> None:
    await conn.execute(delete(provider_event_ids).where(provider_event_ids.c.expires_at < now))


async def active_grants_for_accounts(
    conn: AsyncConnection,
    environment_id: str,
    integration_id: str,
    accounts: Sequence[str],
    prefixes: Sequence[str],
) -> list[GrantRecord]:
    match: list[ColumnElement[bool]] = (
        [grants.c.provider_account_id.in_(list(accounts))] if accounts else []
    )
    for p in prefixes:
        # an exact range instead of LIKE, so '%' or '_' in an account id mean nothing
        match.append(
            and_(grants.c.provider_account_id >= p, grants.c.provider_account_id < p + "\uffff")
        )
    if not match:
        return []
    r = await conn.execute(
        select(grants).where(
            grants.c.environment_id == environment_id,
            grants.c.integration_id == integration_id,
            grants.c.status == "active",
            or_(*match),
        )
    )
    return [to_record(GrantRecord, m) for m in r.mappings().all()]


async def mark_revoked_at_provider(
    conn: AsyncConnection, rec: GrantRecord, *, reason: str, now: float
) -> bool:
    """``invalid`` with ``revoked_at_provider``, every stored secret destroyed.

    A new generation (``version`` bumped in SQL) fences off any refresh in flight.
    """
    r = await conn.execute(
        update(grants)
        .where(
            grants.c.environment_id == rec.environment_id,
            grants.c.id == rec.id,
            grants.c.status == "active",
        )
        .values(
            status="invalid",
            failure_code="revoked_at_provider",
            failure_description=reason[:500],
            failed_at=now,
            access_token_ct=None,
            refresh_token_ct=None,
            id_token_ct=None,
            refresh_due_at=None,
            expiry_warn_at=None,
            probe_due_at=None,
            lease_owner=None,
            lease_until=None,
            version=grants.c.version + 1,
            updated_at=now,
        )
    )
    return r.rowcount == 1


# -- health probes -------------------------------------------------------------------


async def unscheduled_probe_grants(conn: AsyncConnection, limit: int) -> list[tuple[str, str, int]]:
    """Active grants of probed integrations without a probe time: (grant id, env, interval)."""
    r = await conn.execute(
        select(grants.c.id, grants.c.environment_id, integrations.c.health_probe_interval)
        .join(
            integrations,
            and_(
                integrations.c.environment_id == grants.c.environment_id,
                integrations.c.id == grants.c.integration_id,
            ),
        )
        .where(
            grants.c.status == "active",
            grants.c.probe_due_at.is_(None),
            integrations.c.health_probe_interval.is_not(None),
        )
        .limit(limit)
    )
    return [(row[0], row[1], int(row[2])) for row in r.all()]


async def schedule_probes(conn: AsyncConnection, due: Sequence[tuple[str, float]]) -> None:
    for grant_id, at in due:
        await conn.execute(
            update(grants)
            .where(grants.c.id == grant_id, grants.c.probe_due_at.is_(None))
            .values(probe_due_at=at)
        )


async def due_probes(
    conn: AsyncConnection, now: float, limit: int
) -> list[tuple[GrantRecord, int]]:
    """Grants whose probe is due, with their integration's probe interval (None: stopped)."""
    r = await conn.execute(
        select(grants, integrations.c.health_probe_interval.label("_interval"))
        .join(
            integrations,
            and_(
                integrations.c.environment_id == grants.c.environment_id,
                integrations.c.id == grants.c.integration_id,
            ),
        )
        .where(grants.c.status == "active", grants.c.probe_due_at <= now)
        .order_by(grants.c.probe_due_at)
        .limit(limit)
    )
    out: list[tuple[GrantRecord, int]] = []
    for m in r.mappings().all():
        row = dict(m)
        interval = row.pop("_interval")
        out.append((to_record(GrantRecord, row), int(interval or 0)))  # type: ignore[arg-type]
    return out


async def claim_probe(
    conn: AsyncConnection, grant_id: str, seen_due: float, next_due: float | None
) -> bool:
    """Move the probe time on; only one worker wins a given due time."""
    r = await conn.execute(
        update(grants)
        .where(grants.c.id == grant_id, grants.c.probe_due_at == seen_due)
        .values(probe_due_at=next_due)
    )
    return r.rowcount == 1


async def stop_probes(conn: AsyncConnection, environment_id: str, integration_id: str) -> None:
    """The integration no longer probes: forget its grants' probe times."""
    await conn.execute(
        update(grants)
        .where(
            grants.c.environment_id == environment_id,
            grants.c.integration_id == integration_id,
            grants.c.probe_due_at.is_not(None),
        )
        .values(probe_due_at=None)
    )
