"""The lean HTTP/1.1 client of the token endpoint calls, against a real local server.

The server below is scripted per test (what it writes, in which pieces, when it closes);
the client runs unchanged over real sockets: no mocked transport.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from grantkeeper.errors import ProviderOutcomeUnknown, ProviderUnavailable
from grantkeeper.oauth.body import BodyTooLarge
from grantkeeper.oauth.http1 import (
    ConnectFailed,
    ConnectionClosed,
    Http1Client,
    IncompleteAnswer,
)
from grantkeeper.oauth.tokens import ClientCredentials, post_form, token_request

pytestmark = pytest.mark.anyio

#: a step of the scripted answer: bytes to write, a pause, or closing the connection
Step = bytes | float | None
Script = Callable[[int, bytes], list[Step]]

TOKEN = b'{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-2"}'


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    # uvloop is the production loop (serve and worker); stdlib asyncio the fallback
    return ("asyncio", {"use_uvloop": request.param == "uvloop"})


def ok(body: bytes = TOKEN, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{head}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def pieces(data: bytes, size: int, pause: float) -> list[Step]:
    out: list[Step] = []
    for at in range(0, len(data), size):
        out += [data[at : at + size], pause]
    return out


class Server:
    """Counts connections and requests; answers each request with ``script(n, request)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/token?x=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                for step in self.script(len(self.requests), request):
                    if step is None:
                        return
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        writer.write(step)
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Any]]:
    servers: list[Server] = []

    async def start(script: Script) -> Server:
        s = Server(script)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


async def call(client: Http1Client, url: str, timeout: float = 2.0, cap: int = 1 << 20) -> Any:
    return await client.request(
        "POST",
        url,
        {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
        b"grant_type=refresh_token&refresh_token=rt-1",
        timeout=timeout,
        answer_deadline=30.0,
        max_body=cap,
    )


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    c = Http1Client(allow_private=True)
    yield c
    await c.close()


async def test_request_bytes_and_keep_alive_reuse(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [ok()])
    for _ in range(3):
        r = await call(client, srv.url)
        assert r.status == 200 and r.body == TOKEN
        assert r.headers["Content-Type"] == "application/json"
    assert srv.connections == 1, "one keep-alive connection for all three"
    first = srv.requests[0].decode()
    assert first.startswith("POST /token?x=1 HTTP/1.1\r\n")
    host = srv.url.split("/")[2]
    assert f"\r\nHost: {host}\r\n" in first
    assert "\r\nContent-Length: 43\r\n" in first
    assert first.endswith("\r\n\r\ngrant_type=refresh_token&refresh_token=rt-1")
    assert client.idle_connections() == 1


async def test_split_answer_is_read_while_it_keeps_arriving(
    serve: Any, client: Http1Client
) -> None:
    # headers and body in 8-byte pieces 30 ms apart: ~1 s in all, never 0.2 s of silence
    srv = await serve(lambda n, req: pieces(ok(), 8, 0.03))
    started = time.monotonic()
    r = await call(client, srv.url, timeout=0.2)
    assert r.body == TOKEN
    assert time.monotonic() - started > 0.4


async def test_silence_before_the_answer_times_out(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [5.0])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await call(client, srv.url, timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert client.idle_connections() == 0


async def test_silence_inside_the_body_is_an_incomplete_answer(
    serve: Any, client: Http1Client
) -> None:
    srv = await serve(lambda n, req: [ok()[:-20], 5.0])
    with pytest.raises(IncompleteAnswer) as info:
        await call(client, srv.url, timeout=0.2)
    assert info.value.status == 200 and isinstance(info.value.cause, TimeoutError)


async def test_body_deadline_bounds_an_endless_trickle(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: pieces(ok(b"x" * 400), 1, 0.01))
    with pytest.raises(IncompleteAnswer) as info:
        await client.request(
            "POST", srv.url, {}, b"", timeout=0.2, answer_deadline=0.3, max_body=1 << 20
        )
    assert isinstance(info.value.cause, TimeoutError)


async def test_chunked_answer_with_trailer(serve: Any, client: Http1Client) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (TOKEN[:10], TOKEN[10:50], TOKEN[50:]))
        + b"0\r\nx-trailer: 1\r\n\r\n"
    )
    srv = await serve(lambda n, req: pieces(chunked, 13, 0.005))
    assert (await call(client, srv.url)).body == TOKEN
    assert (await call(client, srv.url)).body == TOKEN
    assert srv.connections == 1


async def test_answer_ended_by_closing_the_connection(serve: Any, client: Http1Client) -> None:
    srv = await serve(
        lambda n, req: [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n", TOKEN, None]
    )
    assert (await call(client, srv.url)).body == TOKEN
    assert client.idle_connections() == 0
    assert (await call(client, srv.url)).body == TOKEN
    assert srv.connections == 2


async def test_connection_close_is_honoured(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [ok(TOKEN, "connection: close")])
    await call(client, srv.url)
    await call(client, srv.url)
    assert srv.connections == 2 and client.idle_connections() == 0


async def test_server_closing_an_idle_connection(serve: Any, client: Http1Client) -> None:
    """The server ends a keep-alive connection after answering; the next request sees it
    closed before writing and takes a fresh connection (nothing was sent on the old one)."""
    srv = await serve(lambda n, req: [ok(), 0.05, None])
    await call(client, srv.url)
    await asyncio.sleep(0.2)
    assert (await call(client, srv.url)).body == TOKEN
    assert srv.connections == 2 and len(srv.requests) == 2


async def test_short_server_keep_alive_is_respected(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [ok(TOKEN, "keep-alive: timeout=1")])
    await call(client, srv.url)
    await call(client, srv.url)
    # timeout=1: the connection would be reused within a second of the server's close
    assert srv.connections == 2


async def test_failure_after_the_request_was_written_is_never_retried(
    serve: Any, client: Http1Client
) -> None:
    """A refresh token may have been spent: the second request reached the server, the
    connection broke before the answer, and the client must not send it again."""
    srv = await serve(lambda n, req: [ok()] if n == 1 else [None])
    await call(client, srv.url)
    with pytest.raises(ConnectionClosed):
        await call(client, srv.url)
    await asyncio.sleep(0.05)
    assert len(srv.requests) == 2, "sent exactly once"


async def test_oversize_answers(serve: Any, client: Http1Client) -> None:
    big = await serve(lambda n, req: [ok(b"x" * 5000)])
    with pytest.raises(IncompleteAnswer) as info:
        await call(client, big.url, cap=4096)
    assert isinstance(info.value.cause, BodyTooLarge)
    chunks = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"400\r\n"
        + b"y" * 1024
        + b"\r\n"
    )
    endless = await serve(
        lambda n, req: [chunks + (b"400\r\n" + b"y" * 1024 + b"\r\n") * 8 + b"0\r\n\r\n"]
    )
    with pytest.raises(IncompleteAnswer) as info:
        await call(client, endless.url, cap=4096)
    assert isinstance(info.value.cause, BodyTooLarge)
    headers = await serve(lambda n, req: [b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"p" * 70_000])
    with pytest.raises(Exception) as head_info:
        await call(client, headers.url)
    assert not isinstance(head_info.value, IncompleteAnswer)


async def test_truncated_answer(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [ok()[:-30], 0.02, None])
    with pytest.raises(IncompleteAnswer) as info:
        await call(client, srv.url)
    assert isinstance(info.value.cause, ConnectionClosed)


async def test_interim_answers_are_skipped(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n", ok()])
    r = await call(client, srv.url)
    assert r.status == 200 and r.body == TOKEN and "link" not in r.headers


async def test_connections_per_host_are_capped(serve: Any) -> None:
    srv = await serve(lambda n, req: [0.05, ok()])
    c = Http1Client(allow_private=True, limit_per_host=2)
    try:
        results = await asyncio.gather(*(call(c, srv.url) for _ in range(6)))
        assert all(r.body == TOKEN for r in results)
        assert srv.connections == 2
    finally:
        await c.close()


async def test_cancelled_request_drops_its_connection(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: [0.3, ok()])
    task = asyncio.ensure_future(call(client, srv.url))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.idle_connections() == 0
    assert (await call(client, srv.url)).body == TOKEN
    assert srv.connections == 2


async def test_network_guard_refuses_private_literals(serve: Any) -> None:
    srv = await serve(lambda n, req: [ok()])
    c = Http1Client(allow_private=False)
    try:
        with pytest.raises(ConnectFailed):
            await call(c, srv.url)
        with pytest.raises(ConnectFailed):
            await call(c, srv.url.replace("127.0.0.1", "localhost"))
    finally:
        await c.close()
    assert srv.connections == 0


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_is_verified(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = Server(lambda n, req: [ok()])
    srv.server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=server_ctx)
    url = srv.url.replace("http://127.0.0.1", "https://localhost")
    try:
        # the default context (system trust store) refuses a certificate it cannot verify
        default = Http1Client(allow_private=True)
        try:
            with pytest.raises(ConnectFailed, match="SSLCertVerificationError"):
                await call(default, url)
        finally:
            await default.close()
        trusting = ssl.create_default_context(cafile=str(cert))
        c = Http1Client(allow_private=True, ssl_context=trusting)
        try:
            assert (await call(c, url)).body == TOKEN
            assert (await call(c, url)).body == TOKEN
            assert srv.connections == 1  # kept alive (the refused handshake never got here)
            # the certificate names localhost, not the address: hostname checks apply
            with pytest.raises(ConnectFailed):
                await call(c, url.replace("localhost", "127.0.0.1"))
        finally:
            await c.close()
    finally:
        srv.server.close()


# ------------------------------------------------------------------ post_form on top


async def test_post_form_reads_a_split_token_answer(serve: Any, client: Http1Client) -> None:
    srv = await serve(lambda n, req: pieces(ok(), 7, 0.01))
    tokens = await token_request(
        client,
        srv.url,
        ClientCredentials("app", "s3cret", "client_secret_basic"),
        {"grant_type": "refresh_token", "refresh_token": "rt 1/+"},
        timeout=0.5,
    )
    assert tokens.access_token == "at-1" and tokens.refresh_token == "rt-2"
    req = srv.requests[0].decode()
    assert "\r\nAuthorization: Basic YXBwOnMzY3JldA==\r\n" in req
    assert "\r\nContent-Type: application/x-www-form-urlencoded\r\n" in req
    assert req.endswith("grant_type=refresh_token&refresh_token=rt+1%2F%2B")


async def test_post_form_failure_classes(serve: Any, client: Http1Client) -> None:
    truncated = await serve(lambda n, req: [ok()[:-30], 0.02, None])
    with pytest.raises(ProviderOutcomeUnknown):
        await post_form(client, truncated.url, {"a": "b"}, {}, timeout=1.0)
    busy = await serve(
        lambda n, req: [b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 2\r\n\r\n{}"]
    )
    with pytest.raises(ProviderUnavailable) as info:
        await post_form(client, busy.url, {"a": "b"}, {}, timeout=1.0)
    assert info.value.retry_after == 7
    silent = await serve(lambda n, req: [5.0])
    with pytest.raises(ProviderUnavailable) as info:
        await post_form(client, silent.url, {"a": "b"}, {}, timeout=0.2)
    assert "did not answer in time" in info.value.detail
    refused = silent.url.rsplit(":", 1)[0] + ":1/token"
    with pytest.raises(ProviderUnavailable) as info:
        await post_form(client, refused, {"a": "b"}, {}, timeout=1.0)
    assert "could not reach the provider" in info.value.detail
