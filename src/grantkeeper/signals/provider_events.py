"""Providers' own revocation notices: verify, then mark the named grants invalid at once.

``POST {PUBLIC_URL}/provider-events/{environment}/{integration_id}`` reaches ``receive``
with the raw body and the headers. The scheme comes from the catalog entry (Slack,
GitHub) and defaults to Security Event Tokens for OpenID providers. A verified revocation
marks every matching active grant ``invalid`` (``revoked_at_provider``), destroys its
stored secrets and queues ``grant.invalid``, all in one transaction before the 2xx
answer. Anything unverified changes nothing; repeated failures are rate-limited.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grantkeeper import audit
from grantkeeper.errors import NotFound, RateLimited, SignalRejected
from grantkeeper.integrations import events_secret_aad, resolve
from grantkeeper.providers import ProviderSpec
from grantkeeper.ratelimit import take
from grantkeeper.runtime import Runtime
from grantkeeper.signals.revoked import revoked_at_provider
from grantkeeper.signals.schemes import (
    MAX_AGE,
    Notice,
    Scheme,
    verify_github,
    verify_set,
    verify_slack,
)
from grantkeeper.store import environments as env_store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store import signals as store
from grantkeeper.store.db import reading
from grantkeeper.store.records import IntegrationRecord

__all__ = ["Received", "receive", "scheme_for"]

log = logging.getLogger(__name__)

#: unverified deliveries allowed per integration before 429 (a burst, then one a second)
_FAIL_BURST = 20
_FAIL_RATE = 1.0
#: GitHub deliveries carry no timestamp: a body is remembered this long against replay
_GITHUB_REPLAY_WINDOW = 90 * 86_400.0


@dataclass(frozen=True, slots=True)
class Received:
    status: int
    body: dict[str, Any]


def scheme_for(spec: ProviderSpec) -> Scheme | None:
    if spec.provider_events is not None:
        return spec.provider_events.scheme
    return "set" if spec.auth_mode == "oidc" else None


async def _verify(
    rt: Runtime,
    rec: IntegrationRecord,
    spec: ProviderSpec,
    scheme: Scheme,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> Notice:
    if scheme in ("slack", "github"):
        if rec.provider_events_secret_ct is None:
            raise SignalRejected("the integration has no provider_events_secret")
        secret = rt.vault.open_str(
            rec.provider_events_secret_ct, events_secret_aad(rec.environment_id, rec.id)
        )
        if scheme == "slack":
            return verify_slack(body, headers, secret=secret, now=now)
        notice = verify_github(body, headers, secret=secret)
        # the delivery id header is not signed: a replayed body is recognised by its hash
        return Notice(
            notice.scheme,
            event_id="sha256:" + hashlib.sha256(body).hexdigest(),
            accounts=notice.accounts,
            account_prefixes=notice.account_prefixes,
            reason=notice.reason,
            ignored=notice.ignored,
        )
    resolved = await resolve(rt, rec)
    pe = spec.provider_events
    issuer = resolved.issuer
    issuers = tuple(i for i in (pe.issuer if pe else None, issuer) if i)
    jwks_uri = (pe.jwks_uri if pe else None) or resolved.jwks_uri
    if not issuers or not jwks_uri:
        raise SignalRejected("the integration has no issuer and JWKS to check event tokens")

    async def jwks(force: bool) -> dict[str, Any]:
        return await rt.discovery.jwks(jwks_uri, force=force)

    return await verify_set(body, issuers=issuers, client_id=rec.client_id, jwks=jwks, now=now)


async def _refuse(rt: Runtime, environment_id: str, integration_id: str, scheme: str) -> None:
    """Count an unverified delivery; past the burst, answer 429 instead of 401."""
    rt.metrics.provider_events.labels(scheme, "rejected").inc()
    async with rt.engine.begin() as conn:
        wait = await take(
            conn,
            f"pe-fail:{environment_id}:{integration_id}",
            now=rt.clock.now(),
            rate=_FAIL_RATE,
            burst=_FAIL_BURST,
        )
    if wait is not None:
        raise RateLimited("too many unverified notifications", retry_after=max(1, int(wait) + 1))


async def receive(
    rt: Runtime,
    *,
    environment: str,
    integration_id: str,
    headers: Mapping[str, str],
    body: bytes,
) -> Received:
    """Verify one notification and act on it. ``headers`` use lower-case names."""
    now = rt.clock.now()
    async with reading(rt.engine) as conn:
        environment_id = await env_store.by_name(conn, environment)
        rec = (
            await integration_store.get(conn, environment_id, integration_id)
            if environment_id is not None
            else None
        )
    if environment_id is None or rec is None:
        raise NotFound("no such integration")
    spec = rt.catalog.get(rec.provider)
    scheme = scheme_for(spec)
    if scheme is None:
        raise NotFound("this integration's provider sends no notifications the vault reads")
    try:
        notice = await _verify(rt, rec, spec, scheme, headers, body, now)
    except SignalRejected as exc:
        log.warning(
            "provider notification refused (%s, integration %s): %s",
            scheme,
            integration_id,
            exc.detail,
        )
        await _refuse(rt, environment_id, integration_id, scheme)
        raise
    ok_status = 202 if scheme == "set" else 200
    revoked: list[str] = []
    async with rt.engine.begin() as conn:
        if notice.event_id is not None:
            keep = _GITHUB_REPLAY_WINDOW if scheme == "github" else 2 * MAX_AGE
            fresh = await store.first_sighting(
                conn, environment_id, integration_id, notice.event_id, expires_at=now + keep
            )
            if not fresh:
                if scheme == "set":  # the contract: a jti seen before is refused
                    rt.metrics.provider_events.labels(scheme, "replayed").inc()
                    raise SignalRejected("this event token (jti) was seen before")
                # Slack and GitHub retry deliveries: answer as before, do nothing again
                rt.metrics.provider_events.labels(scheme, "duplicate").inc()
                return Received(ok_status, notice.reply or {"ok": True, "revoked": 0})
        if notice.revokes:
            matches = await store.active_grants_for_accounts(
                conn, environment_id, integration_id, notice.accounts, notice.account_prefixes
            )
            for g in matches:
                if await revoked_at_provider(
                    conn, g, reason=notice.reason, actor=f"provider:{scheme}", now=now
                ):
                    revoked.append(g.id)
        await audit.record(
            conn,
            environment_id=environment_id,
            actor=f"provider:{scheme}",
            action="provider_event.received",
            now=now,
            integration_id=integration_id,
            revoked=len(revoked),
            ignored=list(notice.ignored)[:10],
        )
    rt.metrics.provider_events.labels(scheme, "revoked" if revoked else "accepted").inc()
    if revoked:
        log.info(
            "provider notification (%s) revoked %d grant(s) of integration %s",
            scheme,
            len(revoked),
            integration_id,
        )
    return Received(ok_status, notice.reply or {"ok": True, "revoked": len(revoked)})
