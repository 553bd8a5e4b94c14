"""Delivers queued webhook events: signed, retried with exponential backoff until a 2xx.

Deliveries are leased (like grants) so several workers never send the same
attempt twice at once; a crashed worker's lease simply expires. Delivery is
at-least-once: receivers de-duplicate on ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp
import orjson

from grantkeeper import tracing
from grantkeeper.netguard import check_url
from grantkeeper.runtime import Runtime
from grantkeeper.store import webhooks as store
from grantkeeper.webhooks.endpoints import secret_aad
from grantkeeper.webhooks.signing import signed_headers

__all__ = ["deliver_due", "retry_delay"]

log = logging.getLogger(__name__)


def retry_delay(attempts: int, base_delay: float = 5.0) -> float:
    """5 s, 10 s, 20 s ... (from ``base_delay``) capped at 1 hour, with jitter."""
    base = min(3600.0, base_delay * (2 ** max(attempts - 1, 0)))
    return float(base * random.uniform(0.8, 1.2))


async def deliver_due(rt: Runtime, *, limit: int = 50) -> int:
    """One pass: claim due deliveries and attempt each. Returns how many were attempted."""
    s = rt.settings
    now = rt.clock.now()
    async with rt.engine.begin() as conn:
        batch = await store.claim_deliveries(conn, now, now + s.webhook_timeout * 3, limit)
    if not batch:
        return 0
    await asyncio.gather(*(_attempt(rt, d) for d in batch))
    return len(batch)


async def _attempt(rt: Runtime, d: dict[str, Any]) -> None:
    with tracing.span(
        "grantkeeper.webhook.deliver",
        webhook_endpoint_id=str(d["endpoint_id"]),
        event_id=str(d["event_id"]),
        attempt=int(d["attempts"]) + 1,
    ):
        await _attempt_once(rt, d)


async def _attempt_once(rt: Runtime, d: dict[str, Any]) -> None:
    s = rt.settings
    attempts = int(d["attempts"]) + 1
    status: int | None = None
    error: str | None = None
    try:
        url = check_url(
            str(d["url"]),
            allow_private=s.allow_private_networks,
            what="webhook URL",
            require_https=False,
        )
        secret = rt.vault.open_str(
            d["secret_ct"], secret_aad(str(d["environment_id"]), str(d["endpoint_id"]))
        )
        body = orjson.dumps(d["payload"]).decode()
        headers = signed_headers(secret, str(d["event_id"]), body, rt.clock.now())
        async with rt.http.post(
            url,
            data=body.encode(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=s.webhook_timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            await resp.content.read(65536)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        error = f"{type(exc).__name__}"
    except Exception as exc:  # noqa: BLE001 - an endpoint must not stop the worker
        error = f"{type(exc).__name__}"
    now = rt.clock.now()
    ok = status is not None and 200 <= status < 300
    rt.metrics.webhook_deliveries.labels("success" if ok else "failure").inc()
    next_at: float | None = None
    delivered: float | None = None
    if ok:
        state, delivered = "succeeded", now
    elif attempts >= s.webhook_max_attempts:
        state = "failed"
    else:
        state, next_at = "pending", now + retry_delay(attempts, s.webhook_retry_base)
    if error is None and not ok:
        error = f"HTTP {status}"
    async with rt.engine.begin() as conn:
        await store.record_attempt(
            conn,
            int(d["id"]),
            status=state,
            attempts=attempts,
            next_attempt_at=next_at,
            last_status=status,
            last_error=error,
            delivered_at=delivered,
        )
