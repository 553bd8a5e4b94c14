from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from grantkeeper import connect, ratelimit
from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.inputs import CreateConnectSession, Reconnect
from grantkeeper.store.db import reading

router = APIRouter(tags=["connect"])


@router.post("/v1/connect/sessions", status_code=201)
async def create_session(
    rt: RuntimeDep, principal: PrincipalDep, body: CreateConnectSession
) -> dict[str, Any]:
    principal.require("connect")
    await ratelimit.enforce(rt, principal.key_id, "connect")
    async with rt.engine.begin() as conn:
        return await connect.create_session(conn, rt, principal, body)


@router.get("/v1/connect/sessions/{session_id}")
async def get_session(rt: RuntimeDep, principal: PrincipalDep, session_id: str) -> dict[str, Any]:
    principal.require("connect")
    async with reading(rt.engine) as conn:
        rec = await connect.get_session(conn, principal, session_id)
    return connect.session_view(rec, rt.clock.now())


@router.post("/v1/connect/sessions/{session_id}/tokens")
async def export_tokens(
    rt: RuntimeDep, principal: PrincipalDep, session_id: str, response: Response
) -> dict[str, Any]:
    principal.require("credentials:read")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    async with rt.engine.begin() as conn:
        return await connect.export_tokens(conn, rt, principal, session_id)


@router.post("/v1/grants/{grant_id}/reconnect", status_code=201)
async def reconnect(
    rt: RuntimeDep, principal: PrincipalDep, grant_id: str, body: Reconnect
) -> dict[str, Any]:
    principal.require("connect")
    async with rt.engine.begin() as conn:
        return await connect.reconnect_session(conn, rt, principal, grant_id, body.return_to)
