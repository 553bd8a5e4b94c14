from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.responses import Response

from grantkeeper.api.deps import RuntimeDep
from grantkeeper.api.errors import problem_response
from grantkeeper.rotation import probe as probe_stored
from grantkeeper.store import grants as grant_store
from grantkeeper.store.db import reading

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(rt: RuntimeDep) -> dict[str, Any] | Response:
    try:
        async with reading(rt.engine) as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any database failure means not ready
        return problem_response(
            503, "database_unavailable", "Database unavailable", "the database is not reachable"
        )
    if rt.keys is None or not rt.vault.state.v2 and not rt.vault.state.v1:
        return problem_response(
            503, "vault_sealed", "Keys not loaded", "the key-encryption keys are not usable"
        )
    # the keys must also be the right ones: a wrong GRANTKEEPER_MASTER_KEYS (or a lost
    # development key file) loads fine but opens nothing that is stored (P5)
    try:
        opens = await probe_stored(rt.engine, rt.vault)
    except Exception:  # noqa: BLE001 - any database failure means not ready
        return problem_response(
            503, "database_unavailable", "Database unavailable", "the database is not reachable"
        )
    if opens is False:
        return problem_response(
            503,
            "vault_key_mismatch",
            "Stored secrets do not open",
            "no stored secret opens with the loaded GRANTKEEPER_MASTER_KEYS; "
            "the key that sealed them is missing",
        )
    # each root key reports itself: backend, where it lives, whether its last use worked,
    # and the environments that have it as their own root
    return {
        "status": "ready",
        "primary_key_id": rt.vault.primary_key_id,
        "roots": rt.keys.describe(),
    }


@router.get("/metrics", response_class=Response)
async def metrics(rt: RuntimeDep) -> Response:
    try:

        async def load() -> dict[str, int]:
            async with reading(rt.engine) as conn:
                return await grant_store.count_all_by_status(conn)

        # a count over every grant: at most once per grant_counts_ttl, not per scrape
        totals = await rt.counts.get("all", load)
        for status in ("active", "invalid", "revoked"):
            rt.metrics.grants.labels(status).set(totals.get(status, 0))
    except Exception as exc:  # noqa: BLE001 - metrics must answer even when the database does not
        log.warning("grant counts unavailable for /metrics: %s", type(exc).__name__)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
