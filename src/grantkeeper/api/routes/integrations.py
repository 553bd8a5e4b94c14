from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Response

from grantkeeper import audit
from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.errors import IntegrationInUse, NotFound
from grantkeeper.inputs import INTEGRATION_ID, IntegrationInput
from grantkeeper.integrations import (
    get_or_404,
    integration_view,
    prepare_mcp,
    put_integration,
)
from grantkeeper.store import integrations as store
from grantkeeper.store.db import reading

router = APIRouter(prefix="/v1/integrations", tags=["integrations"])

IntegrationId = Path(pattern=f"^{INTEGRATION_ID}$")


@router.put("/{integration_id}")
async def put(
    rt: RuntimeDep,
    principal: PrincipalDep,
    body: IntegrationInput,
    response: Response,
    integration_id: str = IntegrationId,
) -> dict[str, Any]:
    principal.require("integrations:write")
    principal.require_integration(integration_id)
    # MCP discovery and registration talk to the network: before the transaction
    setup = await prepare_mcp(rt, principal.environment_id, integration_id, body)
    async with rt.engine.begin() as conn:
        rec, created = await put_integration(
            conn, rt, principal.environment_id, integration_id, body, mcp_setup=setup
        )
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=principal.actor,
            action="integration.created" if created else "integration.updated",
            now=rt.clock.now(),
            integration_id=integration_id,
            client_secret_changed=body.client_secret is not None,
            **({"mcp_registration": setup.registration} if setup is not None else {}),
        )
    response.status_code = 201 if created else 200
    return integration_view(rec, rt)


@router.get("")
async def list_(rt: RuntimeDep, principal: PrincipalDep) -> dict[str, Any]:
    principal.require("integrations:read")
    only = tuple(principal.integration_ids) if principal.integration_ids is not None else None
    async with reading(rt.engine) as conn:
        recs = await store.list_integrations(conn, principal.environment_id, only)
    return {"data": [integration_view(r, rt) for r in recs]}


@router.get("/{integration_id}")
async def get(
    rt: RuntimeDep, principal: PrincipalDep, integration_id: str = IntegrationId
) -> dict[str, Any]:
    principal.require("integrations:read")
    if not principal.may_use_integration(integration_id):
        raise NotFound("no such integration")
    async with reading(rt.engine) as conn:
        rec = await get_or_404(conn, principal.environment_id, integration_id)
    return integration_view(rec, rt)


@router.delete("/{integration_id}")
async def delete(
    rt: RuntimeDep, principal: PrincipalDep, integration_id: str = IntegrationId
) -> dict[str, Any]:
    principal.require("integrations:write")
    if not principal.may_use_integration(integration_id):
        raise NotFound("no such integration")
    async with rt.engine.begin() as conn:
        await get_or_404(conn, principal.environment_id, integration_id)
        if await store.has_grants(conn, principal.environment_id, integration_id):
            raise IntegrationInUse("the integration still has grants; delete them first")
        await store.delete_integration(conn, principal.environment_id, integration_id)
        await audit.record(
            conn,
            environment_id=principal.environment_id,
            actor=principal.actor,
            action="integration.deleted",
            now=rt.clock.now(),
            integration_id=integration_id,
        )
    return {"id": integration_id, "deleted": True}
