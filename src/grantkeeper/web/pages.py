"""Jinja2 environment (autoescaping on) and the security headers every page carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

__all__ = ["PAGE_HEADERS", "Templates", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"

# strict: no third-party content, no inline script, no framing, no referrer
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
        "form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Templates:
    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
            auto_reload=False,
        )

    def render(
        self, name: str, status: int = 200, headers: dict[str, str] | None = None, **ctx: Any
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(**ctx)
        h = dict(PAGE_HEADERS)
        if headers:
            h.update(headers)
        return HTMLResponse(html, status_code=status, headers=h)
