"""Client CPU per token-endpoint call: aiohttp (what refreshes used) vs ``oauth.http1``.

Starts ``bench/token_endpoint.py`` on loopback and makes the same refresh form POST
through ``oauth.tokens.post_form``-shaped code on each client, sequentially (client CPU
per call: ``time.process_time`` of this process) and 32 in flight (calls/s), on uvloop
and on the stdlib loop, alternating rounds.

    python -m bench.token_client [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from grantkeeper.netguard import GuardedConnector
from grantkeeper.oauth.body import read_body
from grantkeeper.oauth.http1 import Http1Client

FORM = {"grant_type": "refresh_token", "refresh_token": "rt-" + "x" * 40}
HEADERS = {"Authorization": "Basic YmVuY2gtY2xpZW50OnNlY3JldA==", "Accept": "application/json"}


def _aiohttp_call(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bytes]]:
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=10)

    async def call() -> bytes:
        async with session.post(
            url, data=FORM, headers=HEADERS, timeout=timeout, allow_redirects=False
        ) as resp:
            return await read_body(resp)

    return call


def _http1_call(client: Http1Client, url: str) -> Callable[[], Awaitable[bytes]]:
    from urllib.parse import urlencode

    async def call() -> bytes:
        headers = {
            **HEADERS,
            "Accept-Encoding": "identity",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        r = await client.request(
            "POST",
            url,
            headers,
            urlencode(FORM).encode(),
            timeout=10,
            answer_deadline=60,
            max_body=1 << 20,
        )
        return r.body

    return call


async def _measure(kind: str, url: str, calls: int) -> dict[str, float]:
    if kind == "aiohttp":
        session = aiohttp.ClientSession(
            connector=GuardedConnector(allow_private=True, limit=256, limit_per_host=64),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "grantkeeper"},
        )
        call = _aiohttp_call(session, url)
        close: Any = session.close
    else:
        client = Http1Client(allow_private=True)
        call = _http1_call(client, url)
        close = client.close
    try:
        for _ in range(200):
            await call()
        cpu0 = time.process_time()
        for _ in range(calls):
            await call()
        seq_us = (time.process_time() - cpu0) / calls * 1e6
        sem = asyncio.Semaphore(32)

        async def one() -> None:
            async with sem:
                await call()

        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(one() for _ in range(calls)))
        wall = time.perf_counter() - t0
        par_us = (time.process_time() - cpu0) / calls * 1e6
        return {"seq_cpu_us": seq_us, "par_cpu_us": par_us, "par_calls_s": calls / wall}
    finally:
        await close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = subprocess.Popen(
        [sys.executable, "-m", "bench.token_endpoint", str(port)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    url = f"http://127.0.0.1:{port}/token"
    try:
        time.sleep(1.0)
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(a.rounds):
            for loop in ("uvloop", "asyncio"):
                for kind in ("aiohttp", "http1"):
                    run = asyncio.run if loop == "asyncio" else uvloop.run
                    r = run(_measure(kind, url, a.calls))
                    results.setdefault(f"{kind} on {loop}", []).append(r)
        for name, runs in results.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{name:20s} sequential {med['seq_cpu_us']:6.0f} us CPU/call; 32 in flight "
                f"{med['par_cpu_us']:6.0f} us CPU/call, {med['par_calls_s']:7.0f} calls/s"
            )
    finally:
        ep.terminate()
        ep.wait()


if __name__ == "__main__":
    main()
