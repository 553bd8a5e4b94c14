"""Refresh-token lifetimes: when a grant will die, and telling the app before it does.

A refresh token's end comes from the token response (``refresh_token_expires_in``, or
the member the catalog names for that provider) or from the catalog's rules
(``[refresh] refresh_token_lifetime`` counted from the token's issue or from the user's
consent). Where a refresh pushes the end back (a rotating provider whose lifetime counts
from issue), the vault refreshes ahead of it (a keep-alive) and never bothers the app.
Where nothing but the user can (a lifetime from consent, or a refresh token that is not
replaced), the grant gets ``expiry_warn_at``, and the worker sends ``grant.expiring`` once,
``GRANTKEEPER_EXPIRY_WARNING_DAYS`` before that end, so the app can ask its user to
reconnect in time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper import audit, events
from grantkeeper.clock import iso
from grantkeeper.providers import ProviderSpec
from grantkeeper.runtime import Runtime
from grantkeeper.store._rows import to_record
from grantkeeper.store.records import GrantRecord
from grantkeeper.store.tables import grants

__all__ = [
    "RefreshTokenExpiry",
    "expiry_columns",
    "keepalive_due",
    "refresh_token_expiry",
    "warn_expiring",
]

log = logging.getLogger(__name__)

#: lifetimes beyond this are nonsense (or a provider's "never"): ignored
_MAX_LIFETIME = 20 * 365 * 86_400
#: two deadlines closer than this are the same expiry (a re-announced lifetime)
_SAME_DEADLINE = 3_600.0
_BATCH = 200


@dataclass(frozen=True, slots=True)
class RefreshTokenExpiry:
    expires_at: float
    #: no refresh can push ``expires_at`` back: the user must reconnect before it
    final: bool


def _explicit_lifetime(spec: ProviderSpec, raw: dict[str, Any]) -> float | None:
    names = ["refresh_token_expires_in"]
    if spec.refresh.refresh_token_expires_in_field:
        names.insert(0, spec.refresh.refresh_token_expires_in_field)
    for name in names:
        value = raw.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                continue
        if isinstance(value, int | float) and math.isfinite(value) and 0 < value <= _MAX_LIFETIME:
            return float(value)
    return None


def refresh_token_expiry(
    spec: ProviderSpec,
    *,
    raw: dict[str, Any],
    new_refresh_token: str | None,
    previous_refresh_token: str | None,
    fresh_consent: bool,
    now: float,
) -> RefreshTokenExpiry | None:
    """What a token response says about the refresh token's end; None: nothing new.

    ``fresh_consent``: the response comes from the user's authorization (a code exchange),
    not from a refresh.
    """
    if new_refresh_token is None and previous_refresh_token is None:
        return None
    r = spec.refresh
    rotated = (
        new_refresh_token is not None
        and previous_refresh_token is not None
        and new_refresh_token != previous_refresh_token
    )
    renewable = r.lifetime_from == "issue" and (
        r.rotation == "always" or (r.rotation == "optional" and rotated)
    )
    lifetime = _explicit_lifetime(spec, raw)
    if lifetime is None:
        if new_refresh_token is None or r.refresh_token_lifetime is None:
            return None
        if r.lifetime_from == "consent" and not fresh_consent and previous_refresh_token:
            return None  # counted from the consent: a refresh changes nothing
        lifetime = float(r.refresh_token_lifetime)
    return RefreshTokenExpiry(expires_at=now + lifetime, final=not renewable)


def expiry_columns(expiry: RefreshTokenExpiry | None) -> dict[str, Any]:
    """The grant columns a token write sets for ``expiry`` (none when nothing is new)."""
    if expiry is None:
        return {}
    return {
        "refresh_token_expires_at": expiry.expires_at,
        "expiry_warn_at": expiry.expires_at if expiry.final else None,
    }


def keepalive_due(
    expiry: RefreshTokenExpiry | None, *, now: float, fraction: float
) -> float | None:
    """For an end a refresh pushes back: refresh when ``fraction`` of the time left is gone."""
    if expiry is None or expiry.final:
        return None
    return now + max(expiry.expires_at - now, 0.0) * fraction


async def _due_for_warning(conn: AsyncConnection, horizon: float) -> list[GrantRecord]:
    r = await conn.execute(
        select(grants)
        .where(grants.c.status == "active", grants.c.expiry_warn_at <= horizon)
        .order_by(grants.c.expiry_warn_at)
        .limit(_BATCH)
    )
    return [to_record(GrantRecord, m) for m in r.mappings().all()]


async def warn_expiring(rt: Runtime) -> int:
    """Send ``grant.expiring`` for grants whose final end is within the warning window.

    Once per end: the conditional update claims the warning (any number of workers), and a
    deadline already announced (``expiry_warned_for``) is not announced again.
    """
    now = rt.clock.now()
    horizon = now + rt.settings.expiry_warning_days * 86_400
    sent = 0
    async with rt.engine.begin() as conn:
        for rec in await _due_for_warning(conn, horizon):
            deadline = rec.expiry_warn_at
            assert deadline is not None
            repeat = (
                rec.expiry_warned_for is not None
                and abs(rec.expiry_warned_for - deadline) < _SAME_DEADLINE
            )
            announce = not repeat and deadline > now
            claimed = await conn.execute(
                update(grants)
                .where(
                    grants.c.id == rec.id,
                    grants.c.status == "active",
                    grants.c.expiry_warn_at == deadline,
                )
                .values(
                    expiry_warn_at=None,
                    expiry_warned_for=deadline if announce else rec.expiry_warned_for,
                )
            )
            if claimed.rowcount != 1 or not announce:
                continue
            from grantkeeper.grants import grant_view  # the grant model imports this module

            view = grant_view(rec)
            await events.emit(
                conn,
                environment_id=rec.environment_id,
                event_type="grant.expiring",
                grant=view,
                now=now,
                data={"expires_at": iso(deadline)},
            )
            await audit.record(
                conn,
                environment_id=rec.environment_id,
                actor="system",
                action="grant.expiring",
                now=now,
                grant_id=rec.id,
                integration_id=rec.integration_id,
                expires_at=iso(deadline),
            )
            rt.metrics.expiry_warnings.labels(rec.provider).inc()
            sent += 1
    if sent:
        log.info("sent %d grant.expiring warnings", sent)
    return sent
