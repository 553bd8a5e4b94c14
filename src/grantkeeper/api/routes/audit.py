from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.clock import iso
from grantkeeper.store import audit as store
from grantkeeper.store.db import reading

router = APIRouter(prefix="/v1/audit-events", tags=["audit"])


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    actor: str = row["actor"]
    return {
        "id": row["id"],
        "at": iso(row["at"]),
        "action": row["action"],
        "actor": actor,
        "api_key_id": actor.partition(":")[2] if actor.startswith(("key:", "ui:")) else None,
        "grant_id": row["grant_id"],
        "integration_id": row["integration_id"],
        "detail": row["detail"],
    }


@router.get("")
async def list_events(
    rt: RuntimeDep,
    principal: PrincipalDep,
    grant_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    principal.require("audit:read")
    async with reading(rt.engine) as conn:
        rows, more = await store.list_events(
            conn,
            principal.environment_id,
            grant_id=grant_id,
            integration_ids=principal.integration_ids,
            limit=limit,
            offset=offset,
        )
    return {
        "data": [event_view(r) for r in rows],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }
