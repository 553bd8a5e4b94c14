"""End-user tokens: ``gkut_<id>_<secret>``, minted by the app's backend for one end user.

For apps without a JWT issuer of their own. At most an hour long, bound to one user
(and optionally to some integrations), stored as SHA-256 only, revocable at once:
every use reads the row, so a revoked token stops working on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.apikeys import Principal
from grantkeeper.clock import iso
from grantkeeper.errors import Forbidden, NotFound
from grantkeeper.inputs import INTEGRATION_ID, UserId
from grantkeeper.store import access as store
from grantkeeper.store.access import EndUserTokenRecord

__all__ = [
    "MAX_TTL",
    "PREFIX",
    "CreateEndUserToken",
    "looks_like",
    "lookup",
    "mint",
    "revoke",
]

PREFIX = "gkut_"
MAX_TTL = 3600
_DUMMY_HASH = hashlib.sha256(b"grantkeeper-dummy-end-user-token").digest()


class CreateEndUserToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    integration_ids: (
        Annotated[
            list[Annotated[str, Field(pattern=f"^{INTEGRATION_ID}$")]],
            Field(min_length=1, max_length=50),
        ]
        | None
    ) = None
    ttl: Annotated[int, Field(ge=60, le=MAX_TTL)] = 900


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _parse(raw: str) -> tuple[str, str] | None:
    if not raw.startswith(PREFIX) or len(raw) > 200:
        return None
    token_id, sep, secret = raw[len(PREFIX) :].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


async def mint(
    conn: AsyncConnection, principal: Principal, body: CreateEndUserToken, *, now: float
) -> dict[str, Any]:
    """Returns the wire answer; the token is in it and nowhere else."""
    ids = body.integration_ids
    if principal.integration_ids is not None:
        # a key limited to some integrations cannot mint a token reaching others
        if ids is None:
            ids = sorted(principal.integration_ids)
        elif not set(ids) <= principal.integration_ids:
            raise Forbidden("this API key is not allowed to use all of these integrations")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    expires_at = now + body.ttl
    await store.purge_expired(conn, now - 86_400)
    await store.insert_token(
        conn,
        {
            "id": token_id,
            "environment_id": principal.environment_id,
            "user_id": body.user_id,
            "integration_ids": list(dict.fromkeys(ids)) if ids is not None else None,
            "secret_hash": _hash(secret),
            "created_by": principal.key_id,
            "created_at": now,
            "expires_at": expires_at,
            "revoked_at": None,
        },
    )
    return {
        "id": token_id,
        "token": f"{PREFIX}{token_id}_{secret}",
        "expires_at": iso(expires_at),
        "user_id": body.user_id,
        "integration_ids": list(dict.fromkeys(ids)) if ids is not None else None,
    }


def looks_like(raw: str) -> bool:
    return raw.startswith(PREFIX)


async def lookup(conn: AsyncConnection, raw: str, *, now: float) -> EndUserTokenRecord | None:
    """The live token behind ``raw``, or None (unknown, wrong secret, revoked, expired alike)."""
    parsed = _parse(raw)
    rec = await store.get_token(conn, parsed[0]) if parsed else None
    presented = _hash(parsed[1]) if parsed else _DUMMY_HASH
    ok = hmac.compare_digest(presented, rec.secret_hash if rec is not None else _DUMMY_HASH)
    if rec is None or not ok or rec.revoked_at is not None or rec.expires_at <= now:
        return None
    return rec


async def revoke(conn: AsyncConnection, principal: Principal, token_id: str, *, now: float) -> None:
    if len(token_id) > 32 or not await store.revoke_token(
        conn, principal.environment_id, token_id, now
    ):
        raise NotFound("no such end-user token")
