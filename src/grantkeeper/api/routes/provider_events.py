"""``POST /provider-events/{environment}/{integration_id}``: providers' own revocation notices.

No API key: each delivery is verified by the provider's scheme (``signals``). The body is
read raw (signatures cover the exact bytes) and capped.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Path, Request, Response

from grantkeeper.api.deps import RuntimeDep
from grantkeeper.errors import RequestTooLarge
from grantkeeper.inputs import INTEGRATION_ID
from grantkeeper.signals.provider_events import receive

router = APIRouter(tags=["provider events"])

#: the largest notification read (Slack and GitHub payloads are a few KiB, a SET less)
MAX_BODY = 256 * 1024


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestTooLarge(f"the limit is {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestTooLarge(f"the limit is {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/provider-events/{environment}/{integration_id}",
    responses={
        200: {"description": "Verified (Slack, GitHub); Slack's url_verification challenge"},
        202: {
            "description": "Verified Security Event Token (RFC 8935)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
)
async def provider_event(
    request: Request,
    rt: RuntimeDep,
    environment: str = Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$"),
    integration_id: str = Path(pattern=f"^{INTEGRATION_ID}$"),
) -> Response:
    body = await _body(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    got = await receive(
        rt, environment=environment, integration_id=integration_id, headers=headers, body=body
    )
    return Response(
        orjson.dumps(got.body),
        status_code=got.status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
