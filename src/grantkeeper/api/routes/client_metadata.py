"""The vault's OAuth client ID metadata document (draft-ietf-oauth-client-id-metadata-document).

Authorization servers that advertise ``client_id_metadata_document_supported`` accept
this document's URL as the vault's ``client_id`` and fetch it to learn the redirect URI.
Public: it holds no secret. Its URL is stable as long as ``GRANTKEEPER_PUBLIC_URL`` is.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from grantkeeper.api.deps import RuntimeDep
from grantkeeper.kinds.mcp import CLIENT_METADATA_PATH, client_metadata_document

__all__ = ["router"]

router = APIRouter(tags=["mcp"])


@router.get(CLIENT_METADATA_PATH, summary="The vault's OAuth client ID metadata document")
async def client_metadata(rt: RuntimeDep) -> JSONResponse:
    return JSONResponse(
        client_metadata_document(rt.settings), headers={"Cache-Control": "public, max-age=300"}
    )
