"""A minimal, fast OAuth token endpoint for refresh benchmarks (loopback only).

Hand-written HTTP/1.1 on asyncio (keep-alive, Content-Length bodies only): a
refresh costs it a few tens of microseconds, so the benchmark measures
grantkeeper, not the provider. Every ``refresh_token`` presented is counted;
one presented twice is a double refresh. ``GET /stats`` answers the counts.

    python -m bench.token_endpoint PORT [--delay SECONDS] [--expires-in SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter
from urllib.parse import parse_qsl

import orjson


class State:
    def __init__(self, delay: float, expires_in: int) -> None:
        self.delay = delay
        self.expires_in = expires_in
        self.calls = 0
        self.seen: Counter[str] = Counter()
        #: when the last call arrived (epoch seconds; the storm bench places it in time)
        self.last_call_at = 0.0

    def stats(self) -> dict[str, float]:
        dup = sum(n - 1 for n in self.seen.values() if n > 1)
        return {
            "calls": self.calls,
            "distinct_refresh_tokens": len(self.seen),
            "duplicates": dup,
            "last_call_at": self.last_call_at,
        }


def _response(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class Proto(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self.handle(method, path, body)

    def handle(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        st = self.state
        if method == "GET" and path.startswith("/stats"):
            self.transport.write(_response("200 OK", orjson.dumps(st.stats())))
            return
        if method == "POST" and path.startswith("/reset"):
            st.calls = 0
            st.seen.clear()
            self.transport.write(_response("200 OK", b"{}"))
            return
        if method != "POST" or not path.startswith("/token"):
            self.transport.write(_response("404 Not Found", b"{}"))
            return
        form = dict(parse_qsl(body.decode()))
        st.calls += 1
        st.last_call_at = time.time()
        rt = form.get("refresh_token", "")
        st.seen[rt] += 1
        answer = orjson.dumps(
            {
                "access_token": "at-" + secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": st.expires_in,
                "refresh_token": "rt-" + secrets.token_urlsafe(24),
            }
        )
        out = _response("200 OK", answer)
        if st.delay > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(st.delay, self._write, out)
        else:
            self.transport.write(out)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int, delay: float, expires_in: int) -> None:
    state = State(delay, expires_in)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Proto(state), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--expires-in", type=int, default=3600)
    a = p.parse_args()
    import uvloop

    uvloop.run(serve(a.port, a.delay, a.expires_in))


if __name__ == "__main__":
    main()
