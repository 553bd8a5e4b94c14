"""``/v1/me/...``: an end user's own grants, a connect for themselves, a disconnect.

The caller is a ``Subject`` (a trusted JWT or an end-user token), never an API key;
everything is limited to that user (and to the integrations an end-user token is
bound to). Another user's grant is a plain 404, like a grant that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from grantkeeper import connect, ratelimit
from grantkeeper.access.subjects import Subject
from grantkeeper.errors import NotFound
from grantkeeper.grants import get_visible, grant_view
from grantkeeper.inputs import INTEGRATION_ID, CreateConnectSession, Url
from grantkeeper.revocation import delete_grant
from grantkeeper.runtime import Runtime
from grantkeeper.store import grants as grant_store
from grantkeeper.store.db import reading

__all__ = ["MyConnectSession", "disconnect", "my_grants", "start_connect"]


class MyConnectSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    integration_id: Annotated[str, Field(pattern=f"^{INTEGRATION_ID}$")]
    return_to: Url


async def my_grants(rt: Runtime, subject: Subject) -> list[dict[str, Any]]:
    """The user's grants that are not revoked (newest first)."""
    async with reading(rt.engine) as conn:
        rows, _ = await grant_store.list_grants(
            conn,
            subject.environment_id,
            integration_ids=sorted(subject.integration_ids)
            if subject.integration_ids is not None
            else None,
            user_id=subject.user_id,
            limit=200,
        )
    return [grant_view(r) for r in rows if r.status != "revoked"]


async def start_connect(rt: Runtime, subject: Subject, body: MyConnectSession) -> dict[str, Any]:
    principal = subject.principal()
    await ratelimit.enforce(rt, subject.bucket, "connect")
    request = CreateConnectSession(
        integration_id=body.integration_id, user_id=subject.user_id, return_to=body.return_to
    )
    if not subject.may_use_integration(body.integration_id):
        raise NotFound("no such integration")
    async with rt.engine.begin() as conn:
        return await connect.create_session(conn, rt, principal, request)


async def disconnect(rt: Runtime, subject: Subject, grant_id: str) -> dict[str, Any]:
    async with reading(rt.engine) as conn:
        rec = await get_visible(conn, subject.environment_id, grant_id, subject.integration_ids)
    if rec.user_id != subject.user_id:
        raise NotFound("no such grant")
    return await delete_grant(rt, subject.principal(), rec.id)
