"""``POST /v1/grants/{id}/credentials``: a grant's credentials, whatever its kind.

Token kinds answer the fields of ``/token`` (minted or refreshed first, like ``/token``);
``api_key``, ``basic`` and ``oauth1`` answer their stored values. Never a refresh token,
private key or client secret. Audited (``credentials.issued``) before the answer leaves.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from grantkeeper import audit, ratelimit
from grantkeeper.api.deps import PrincipalDep, RuntimeDep
from grantkeeper.clock import iso
from grantkeeper.credential_grants import credentials_payload, visible_grant
from grantkeeper.errors import NotFound
from grantkeeper.inputs import TokenRequest
from grantkeeper.kinds import kind_for
from grantkeeper.kinds.config import kind_config
from grantkeeper.refresh.engine import ensure_fresh, issued, raise_for_status
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading

router = APIRouter(tags=["grants"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The grant's credentials: `type` (its auth mode) and the kind's fields",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"type": "string"}},
                    "additionalProperties": True,
                }
            }
        },
    }
}


@router.post("/v1/grants/{grant_id}/credentials", response_class=Response, responses=_RESPONSES)
async def grant_credentials(
    rt: RuntimeDep, principal: PrincipalDep, grant_id: str, body: TokenRequest | None = None
) -> Response:
    # the same secrets as /token: the same budget, spent before the grant is looked up
    await ratelimit.enforce(rt, principal.key_id, "token")
    principal.require("credentials:read")
    rec = await visible_grant(rt, principal, grant_id)
    raise_for_status(rec)
    async with reading(rt.engine) as conn:
        integ = await integration_store.get(conn, rec.environment_id, rec.integration_id)
    if integ is None:
        raise NotFound("no such grant")
    cfg = kind_config(rt, integ)
    token: dict[str, Any] | None = None
    if kind_for(cfg.mode).has_access_token:
        req = body or TokenRequest()
        rec = await ensure_fresh(rt, rec, min_ttl=req.min_ttl, force=req.force_refresh)
        t = issued(rt, rec)
        now = rt.clock.now()
        token = {
            "access_token": t.access_token,
            "token_type": t.token_type,
            "expires_at": iso(t.expires_at),
            "expires_in": max(int(t.expires_at - now), 0) if t.expires_at is not None else None,
            "scopes": list(t.scopes),
            "grant_id": t.grant_id,
        }
    payload = credentials_payload(rt, rec, cfg, token)
    async with rt.engine.begin() as conn:
        await audit.record(
            conn,
            environment_id=rec.environment_id,
            actor=principal.actor,
            action="credentials.issued",
            now=rt.clock.now(),
            grant_id=rec.id,
            integration_id=rec.integration_id,
            type=cfg.mode,
            generation=rec.version,
        )
    return Response(
        orjson.dumps(payload),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )
