"""``serve``'s socket: bound before anything else, announced only once it answers.

Binding first makes a taken port fail in a moment with one line, before migrations,
the worker or the lifespan have started anything that would need undoing.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from grantkeeper.cli._common import err_console, fail

__all__ = ["bind", "serve_on"]


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not listening yet), or exit 1 with a clear message."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", code=1)
        raise  # unreachable
    sock = socket.socket(family, kind, proto)
    # lets a restart reuse the port at once; never lets two servers share a listening port
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(
                f"port {port} is already in use on {host}: stop what runs there "
                "or choose another port with --port",
                code=1,
            )
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", code=1)
    sock.set_inheritable(True)
    return sock


def serve_on(sock: socket.socket, app: Any, banner: str, *, shutdown_timeout: float = 10.0) -> None:
    """Run uvicorn on ``sock``; print ``banner`` once the server accepts connections."""
    import uvicorn

    class _Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                err_console.print(banner, highlight=False, soft_wrap=True)

        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGTERM/SIGINT: the worker stops claiming at once, refreshes in flight drain
            begin = getattr(app.state, "begin_shutdown", None) if hasattr(app, "state") else None
            if begin is not None and not self.should_exit:
                begin()
            super().handle_exit(sig, frame)

    http: Any = "auto"
    try:  # httptools comes with uvicorn[standard]; without it uvicorn's own choice stands
        from grantkeeper.api.serverproto import HeadHoldingHttpToolsProtocol

        http = HeadHoldingHttpToolsProtocol
    except ImportError:
        pass
    config = uvicorn.Config(
        app,
        access_log=False,  # our AccessLog never logs query strings
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        loop="auto",
        # each response's head leaves with its body: one write, not two (api/serverproto.py)
        http=http,
        # requests in flight (a token call waiting for its refresh) get this long; the
        # last second is left to the drain and the close, so the process exits in time
        timeout_graceful_shutdown=max(1, int(shutdown_timeout - 1)),
    )
    _Announcing(config).run(sockets=[sock])
