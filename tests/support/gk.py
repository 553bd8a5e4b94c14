"""Real grantkeeper processes for tests, on SQLite or a fresh PostgreSQL database.

``GRANTKEEPER_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns "PostgreSQL is not
reachable" from a visible skip into a failure.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from grantkeeper.config import Settings

PG_ADMIN_DSN = os.environ.get("GRANTKEEPER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def master_key(kid: str = "t1") -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip (visibly) when PostgreSQL is absent, or fail when CI demands it."""
    if _pg_reachable():
        return
    if os.environ.get("GRANTKEEPER_REQUIRE_POSTGRES") == "1":
        pytest.fail("PostgreSQL is required (GRANTKEEPER_REQUIRE_POSTGRES=1) but 127.0.0.1:5432 is not reachable")
    pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432: PostgreSQL runs skipped")


def _psql(sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@dataclass
class Database:
    backend: str
    url: str
    cleanup: list[str] = field(default_factory=list)

    def drop(self) -> None:
        for name in self.cleanup:
            with contextlib.suppress(Exception):
                _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_database(backend: str, tmp: Path) -> Database:
    if backend == "sqlite":
        return Database("sqlite", f"sqlite+aiosqlite:///{tmp / ('gk-' + secrets.token_hex(4) + '.db')}")
    require_postgres()
    name = "gk_test_" + secrets.token_hex(6)
    _psql(f'CREATE DATABASE "{name}"')
    return Database("postgres", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", [name])


@dataclass
class Server:
    """A running ``grantkeeper serve`` process."""

    base_url: str
    admin_key: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    db: Database

    def client(self, key: str | None = None, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=kw.pop("timeout", 30.0),
            **kw,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "grantkeeper.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_env(db: Database, port: int, tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    env.update(
        GRANTKEEPER_DATABASE_URL=db.url,
        GRANTKEEPER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        GRANTKEEPER_MASTER_KEYS=master_key(),
        GRANTKEEPER_ALLOW_PRIVATE_NETWORKS="1",
        GRANTKEEPER_LOG_LEVEL="DEBUG",
        GRANTKEEPER_WORKER_INTERVAL="0.2",
        GRANTKEEPER_HTTP_TIMEOUT="5",
        GRANTKEEPER_REFRESH_LEASE_SECONDS="10",
        GRANTKEEPER_REFRESH_WAIT_TIMEOUT="15",
        GRANTKEEPER_REFRESH_MIN_INTERVAL="0",
        GRANTKEEPER_WEBHOOK_RETRY_BASE="0.3",
        # new keyring keys activate after two re-checks: keep `keys rotate` quick in tests
        GRANTKEEPER_KEYRING_CHECK_INTERVAL="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def start_server(
    env: dict[str, str],
    port: int,
    log_path: Path,
    db: Database,
    *,
    worker: bool = True,
    admin_key: str | None = None,
    timeout: float = 90.0,
) -> Server:
    args = [sys.executable, "-m", "grantkeeper.cli", "serve", "--port", str(port)]
    if not worker:
        args.append("--no-worker")
    out = log_path.with_suffix(".stdout")
    with open(log_path, "ab") as log, open(out, "ab") as stdout:
        proc = subprocess.Popen(args, env=env, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"grantkeeper exited early:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"grantkeeper did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
    if admin_key is None:
        m = re.search(r"GRANTKEEPER_ADMIN_KEY=(\S+)", out.read_text())
        if m is None:
            raise RuntimeError("no admin key printed on first start")
        admin_key = m.group(1)
    return Server(base, admin_key, env, proc, log_path, db)


@contextlib.contextmanager
def running_server(backend: str, tmp: Path, *, worker: bool = True, **overrides: str) -> Iterator[Server]:
    db = new_database(backend, tmp)
    port = free_port()
    env = server_env(db, port, tmp, **overrides)
    server = start_server(env, port, tmp / f"server-{port}.log", db, worker=worker)
    try:
        yield server
    finally:
        server.stop()
        db.drop()


# ---------------------------------------------------------------- webhook receiver


@dataclass
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes
    path: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookSink:
    """A loopback HTTP server that records what it receives; can answer errors first."""

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self.fail_next = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                if sink.fail_next > 0:
                    sink.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.received.append(ReceivedWebhook({k.lower(): v for k, v in self.headers.items()}, body, self.path))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[ReceivedWebhook]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [w for w in self.received if predicate(w)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no matching webhook within {timeout}s; got {[w.json().get('type') for w in self.received]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    b: str = request.param
    if b == "postgres":
        require_postgres()
    return b


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of each backend, migrated to the head revision (no process runs on it)."""
    from grantkeeper.store.migrate import upgrade

    db = new_database(backend, tmp_path)
    upgrade(db.url)
    try:
        yield db
    finally:
        db.drop()


@contextlib.asynccontextmanager
async def engine_for(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The engine a process with ``settings`` opens, disposed on exit."""
    from grantkeeper.store.db import create_engine

    eng = create_engine(settings)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def engine(database: Database) -> AsyncIterator[AsyncEngine]:
    """An engine on ``database`` (async tests: mark them ``anyio``)."""
    from grantkeeper.config import Settings

    async with engine_for(Settings(database_url=database.url, master_keys=master_key(), db_pool_size=8)) as eng:  # type: ignore[arg-type]
        yield eng


@pytest.fixture
def gk(backend: str, tmp_path: Path) -> Iterator[Server]:
    """A fresh grantkeeper (API + worker) on a fresh database of each backend."""
    with running_server(backend, tmp_path) as server:
        yield server


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.close()


def db_vault(db_url: str, keys: str) -> Any:
    """The vault a process with ``GRANTKEEPER_MASTER_KEYS=keys`` unseals from this database
    (root keys -> the keyring stored in it): opens what the server stored."""
    import asyncio

    from grantkeeper.config import Settings
    from grantkeeper.runtime import unseal
    from grantkeeper.store.db import create_engine

    out: list[Any] = []

    async def go() -> None:
        settings = Settings(database_url=db_url, master_keys=keys)  # type: ignore[arg-type]
        engine = create_engine(settings)
        try:
            out.append((await unseal(settings, engine)).vault)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out.append(exc)
        finally:
            await engine.dispose()

    # in a thread of its own: callers may already run an event loop
    t = threading.Thread(target=asyncio.run, args=(go(),))
    t.start()
    t.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]
