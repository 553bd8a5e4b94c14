"""uvicorn's HTTP/1.1 protocol (httptools), writing each response's head with its body.

uvicorn writes the status line and headers when the app sends ``http.response.start``
and the body when it sends ``http.response.body``: two ``send`` syscalls per response,
each waking the client on loopback. Profiling the token read put about 15% of the
server's CPU in those two writes. ``HeadHolding`` keeps a write back until the next
write on the same connection (then both go in one call) or the end of the event loop
turn, whichever comes first: the head and a body sent in the same turn leave together;
nothing is reordered, and nothing waits longer than the turn that wrote it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeadHolding", "HeadHoldingHttpToolsProtocol"]

#: a held write is joined to the next one up to this size; larger ones go as two writes
_JOIN_MAX = 64 * 1024


class HeadHolding:
    """A transport whose response heads wait for their body (see the module docstring).

    Only a write that looks like a response head (``HTTP/``) is held; it is written before
    anything that follows it, and at the latest when the loop turn ends, or on close.
    """

    __slots__ = ("_held", "_loop", "_t")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_MAX:
                self._t.write(held + bytes(data))
            else:
                self._t.write(held)
                self._t.write(data)
        elif data[:5] == b"HTTP/":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._t.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._t.is_closing():
                self._t.write(held)

    def close(self) -> None:
        self.flush()
        self._t.close()

    def write_eof(self) -> None:
        self.flush()
        self._t.write_eof()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._t.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class HeadHoldingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``HeadHolding`` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHolding(transport, self.loop))  # type: ignore[arg-type]
