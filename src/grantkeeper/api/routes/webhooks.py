from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.inputs import CreateWebhookEndpoint
from grantkeeper.store import webhooks as store
from grantkeeper.store.db import reading
from grantkeeper.webhooks.endpoints import (
    create_endpoint,
    delete_endpoint,
    endpoint_view,
    get_endpoint,
)

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])


@router.post("", status_code=201)
async def create(
    rt: RuntimeDep, principal: PrincipalDep, body: CreateWebhookEndpoint, response: Response
) -> dict[str, Any]:
    principal.require("webhooks:write")
    response.headers["Cache-Control"] = "no-store"
    async with rt.engine.begin() as conn:
        return await create_endpoint(conn, rt, principal, body)


@router.get("")
async def list_(rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    principal.require("webhooks:write")
    async with reading(rt.engine) as conn:
        rows = await store.list_endpoints(conn, principal.environment_id, principal.integration_ids)
    return {"data": [endpoint_view(r) for r in rows]}


@router.get("/{endpoint_id}")
async def get(rt: RuntimeDep, principal: PrincipalDep, endpoint_id: str) -> dict[str, Any]:
    principal.require("webhooks:write")
    async with reading(rt.engine) as conn:
        return await get_endpoint(conn, principal, endpoint_id)


@router.delete("/{endpoint_id}")
async def delete(rt: RuntimeDep, principal: PrincipalDep, endpoint_id: str) -> dict[str, Any]:
    principal.require("webhooks:write")
    async with rt.engine.begin() as conn:
        await delete_endpoint(conn, rt, principal, endpoint_id)
    return {"id": endpoint_id, "deleted": True}
