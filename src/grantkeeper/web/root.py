"""``/`` and ``/favicon.ico``: what a browser asks for first."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import FileResponse, RedirectResponse, Response

from grantkeeper.web.pages import STATIC_DIR

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> Response:
    """Someone who opens the server's address in a browser wants the admin UI."""
    return RedirectResponse("/ui", status_code=302)


@router.get("/favicon.ico")
async def favicon() -> Response:
    return FileResponse(
        STATIC_DIR / "favicon.ico",
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )
