"""Many parallel token requests from one test process.

The client is aiohttp, not ``httpx.AsyncClient``: with hundreds of requests in flight httpx's
connection pool costs the test process tens of seconds of CPU (1,000 requests over 200
connections: ~35 s against aiohttp's ~0.4 s, measured on the CI machine), which the server
under test then competes with. What the tests prove is the server's answer to the burst, so
only the client changed: the same number of requests, all started together.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: enough of ``httpx.Response`` for the assertions (status, body)."""

    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


async def parallel_posts(url: str, key: str, body: dict[str, Any], n: int, *, connections: int | None = None, timeout: float = 60) -> list[Answer]:
    """``n`` POSTs of ``body`` to ``url``, all started at once, over at most ``connections``
    connections (default ``n``: one each); the answers in request order."""
    connector = aiohttp.TCPConnector(limit=connections or n, limit_per_host=0, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {key}"},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as session:

        async def one() -> Answer:
            async with session.post(url, json=body) as r:
                return Answer(r.status, await r.text())

        return await asyncio.gather(*(one() for _ in range(n)))
