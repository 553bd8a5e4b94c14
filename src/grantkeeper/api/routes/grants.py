from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.apikeys import Principal
from grantkeeper.credential_grants import create_credential_grant, is_code_kind
from grantkeeper.errors import InvalidInput
from grantkeeper.grants import get_visible, grant_view
from grantkeeper.imports import import_grant
from grantkeeper.inputs import INTEGRATION_ID, ImportGrant
from grantkeeper.integrations import get_or_404
from grantkeeper.revocation import delete_grant
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as store
from grantkeeper.store.db import reading

router = APIRouter(prefix="/v1/grants", tags=["grants"])


@router.get("")
async def list_grants(
    rt: RuntimeDep,
    principal: PrincipalDep,
    integration_id: Annotated[str | None, Query(pattern=f"^{INTEGRATION_ID}$")] = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    status: Literal["active", "invalid", "revoked"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 10,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    principal.require("grants:read")
    if user_id is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in user_id):
        user_id = "\ufffd"  # can match nothing; keeps NUL bytes away from the database
    async with reading(rt.engine) as conn:
        rows, more = await store.list_grants(
            conn,
            principal.environment_id,
            integration_id=integration_id,
            integration_ids=sorted(principal.integration_ids)
            if principal.integration_ids is not None
            else None,
            user_id=user_id,
            status=status,
            limit=limit,
            offset=offset,
        )
    return {
        "data": [grant_view(r) for r in rows],
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }


@router.post("", status_code=201)
async def create_grant(
    rt: RuntimeDep, principal: PrincipalDep, body: ImportGrant
) -> dict[str, Any]:
    principal.require("grants:write")
    if body.credentials is not None or not is_code_kind(
        rt, await _provider_of(rt, principal, body)
    ):
        return grant_view(await create_credential_grant(rt, principal, body))
    if body.refresh_token is None:
        raise InvalidInput("refresh_token is required to import an authorization-code grant")
    return grant_view(await import_grant(rt, principal, body))


async def _provider_of(rt: Runtime, principal: Principal, body: ImportGrant) -> str:
    principal.require_integration(body.integration_id)
    async with reading(rt.engine) as conn:
        integ = await get_or_404(conn, principal.environment_id, body.integration_id)
    return integ.provider


@router.get("/{grant_id}")
async def get_grant(rt: RuntimeDep, principal: PrincipalDep, grant_id: str) -> dict[str, Any]:
    principal.require("grants:read")
    async with reading(rt.engine) as conn:
        rec = await get_visible(conn, principal.environment_id, grant_id, principal.integration_ids)
    return grant_view(rec)


@router.delete("/{grant_id}")
async def revoke_grant(rt: RuntimeDep, principal: PrincipalDep, grant_id: str) -> dict[str, Any]:
    principal.require("grants:write")
    return await delete_grant(rt, principal, grant_id)
