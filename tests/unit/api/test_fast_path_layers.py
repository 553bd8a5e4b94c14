"""The token read's fast path: a database outage is a 503 (as the full stack answers it,
never a 500), and the batched access log writes the same lines as before."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from grantkeeper.api.middleware import AccessLog, TokenFastPath, flush_access_log
from grantkeeper.config import Settings
from grantkeeper.logs import configure_logging

GID = "00000000-0000-4000-8000-000000000000"


async def _database_down(scope: Scope, body: bytes) -> Response:
    raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _call(app: object, path: str, query: str = "") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.post(path + query, json={})


def test_a_database_outage_on_the_fast_path_is_503_store_unavailable() -> None:
    app = TokenFastPath(_ok, _database_down, max_body=1024)
    r = asyncio.run(_call(app, f"/v1/grants/{GID}/token"))
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"].isdigit()
    assert r.json()["code"] == "store_unavailable"
    assert "refused" not in r.text and "SELECT" not in r.text


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    fmt = request.param
    configure_logging(Settings(log_format=fmt, log_level="INFO"))
    root = logging.getLogger()
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    try:
        yield out
    finally:
        configure_logging(Settings(log_level="WARNING"))


@pytest.mark.parametrize("captured", ["text", "json"], indirect=True)
def test_access_lines_are_written_in_batches_with_the_same_content(captured: io.StringIO) -> None:
    app = AccessLog(_ok)

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            await asyncio.gather(
                *(c.post(f"/v1/grants/{GID}/token?key=gk_secret_value", json={}) for _ in range(5)),
                c.get("/connect/capability-in-the-path"),
            )
        await asyncio.sleep(0)  # the batch is written right after the loop turn
        flush_access_log()

    asyncio.run(go())
    lines = captured.getvalue().splitlines()
    assert len(lines) == 6
    text = captured.getvalue()
    assert "gk_secret_value" not in text and "capability-in-the-path" not in text
    for line in lines:
        msg = json.loads(line)["msg"] if line.startswith("{") else line.split(": ", 1)[1]
        method, path, status, took = msg.split(" ")
        assert (method, status) in (("POST", "200"), ("GET", "200"))
        assert path in (f"/v1/grants/{GID}/token", "/connect/…")
        assert took.endswith("ms") and float(took[:-2]) >= 0
        if line.startswith("{"):
            doc = json.loads(line)
            assert doc["logger"] == "grantkeeper.access" and doc["level"] == "info"
        else:
            assert " INFO grantkeeper.access: " in line
