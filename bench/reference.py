"""The bare reference endpoint: the floor grantkeeper's token read is compared with.

A minimal ASGI app on the same database and schema: one primary-key select of
the grant through an asyncpg pool of 4 (no reset query on release), one
envelope open (unwrap the data key + AES-GCM open, the same ``Vault`` code),
one orjson answer. No authentication, no audit row, no framework.

    GK_REF_DSN=postgresql://... GRANTKEEPER_MASTER_KEYS=... \\
        uvicorn --loop uvloop --http httptools bench.reference:app
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg
import orjson

from grantkeeper.vault import Keyring, Vault, aad_for

_SQL = (
    "SELECT environment_id, id, version, token_type, access_token_ct, access_token_expires_at "
    "FROM grants WHERE id = $1"
)
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_state: dict[str, Any] = {}


async def _noop_reset(_conn: asyncpg.Connection) -> None:
    return None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                _state["vault"] = Vault(Keyring.parse(os.environ["GRANTKEEPER_MASTER_KEYS"]))
                _state["pool"] = await asyncpg.create_pool(
                    os.environ["GK_REF_DSN"], min_size=4, max_size=4, reset=_noop_reset
                )
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await _state["pool"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    # drain the request body
    while (await receive()).get("more_body"):
        pass
    grant_id = scope["path"].split("/")[3]
    async with _state["pool"].acquire() as conn:
        row = await conn.fetchrow(_SQL, grant_id)
    if row is None:
        await send({"type": "http.response.start", "status": 404, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    aad = aad_for(row[0], "grants", row[1], "access_token", row[2])
    token = _state["vault"].open(row[4], aad).decode()
    body = orjson.dumps(
        {
            "access_token": token,
            "token_type": row[3],
            "expires_at": row[5],
            "grant_id": row[1],
        }
    )
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": body})
