"""grantkeeper benchmarks (issue 9). One command: ``./bench/run`` (``--quick`` for a short pass).

Everything runs on loopback against PostgreSQL at 127.0.0.1:5432 (trust auth) in
fresh ``gk_bench_*`` databases that are dropped afterwards. Results go to
``docs/benchmarks.md`` (and ``docs/benchmarks.json``, which ``--only`` merges into).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import platform
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PG = os.environ.get("GK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
T = TypeVar("T")
WRK_LUA = Path(__file__).with_name("token.lua")
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmarks.json"
SECTIONS = ("read", "scale", "storm", "proactive", "memory", "crypto", "kms")
TOKEN_LEN = 1000  # a typical JWT-sized access token


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def master_key(kid: str) -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


# ------------------------------------------------------------------ databases


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Db:
    name: str

    @property
    def dsn(self) -> str:
        return f"{PG}/{self.name}"

    @property
    def url(self) -> str:
        return "postgresql+asyncpg://" + self.dsn.split("://", 1)[1]


@contextlib.contextmanager
def bench_db(tag: str) -> Iterator[Db]:
    db = Db(f"gk_bench_{tag}_{secrets.token_hex(3)}")
    asyncio.run(_admin(f'CREATE DATABASE "{db.name}"'))
    try:
        yield db
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))


def settings_for(db: Db, keys: str, port: int = 8080) -> Any:
    from grantkeeper.config import Settings

    return Settings(
        database_url=db.url,
        master_keys=keys,
        public_url=f"http://127.0.0.1:{port}",
        allow_private_networks=True,
    )


def bootstrap(db: Db, keys: str) -> tuple[str, str]:
    """Migrate, create ``default`` and an admin key: (environment id, admin key)."""
    from grantkeeper.bootstrap import initialize
    from grantkeeper.store.db import create_engine

    settings = settings_for(db, keys)

    async def go() -> tuple[str, str]:
        engine = create_engine(settings)
        try:
            key = await initialize(settings, engine)
            assert key is not None
        finally:
            await engine.dispose()
        conn = await asyncpg.connect(db.dsn)
        try:
            env_id = await conn.fetchval("SELECT id FROM environments WHERE name = 'default'")
        finally:
            await conn.close()
        return str(env_id), key

    return asyncio.run(go())


_COLS = [
    "id", "environment_id", "integration_id", "provider", "user_id", "provider_account_id",
    "status", "scopes", "token_type", "access_token_ct", "refresh_token_ct",
    "access_token_expires_at", "version", "last_refreshed_at", "refresh_due_at",
    "refresh_attempts", "token_extra", "created_via", "created_at", "updated_at",
]  # fmt: skip


def seed(
    db: Db,
    keys: str,
    env_id: str,
    n: int,
    *,
    start: int = 0,
    expires_at: float,
    due_at: float | None,
    last_refreshed: float | None = None,
    vault: Any = None,
) -> list[str]:
    """Insert ``n`` pre-sealed grants with COPY; returns their ids (sealed by ``vault``, by
    default one of the local ``keys`` in format v1)."""
    from grantkeeper.grants import token_aad
    from grantkeeper.vault import Keyring, Vault

    vault = vault or Vault(Keyring.parse(keys))
    now = time.time()
    token = secrets.token_urlsafe(TOKEN_LEN)[:TOKEN_LEN]
    ids: list[str] = []

    async def go() -> None:
        conn = await asyncpg.connect(db.dsn)
        try:
            batch: list[tuple[Any, ...]] = []
            for i in range(start, start + n):
                gid = str(uuid.uuid4())
                ids.append(gid)
                at = vault.seal(token[:-8] + f"{i:08d}", token_aad(env_id, gid, "access_token", 1))
                rt = vault.seal(f"rt-{gid}", token_aad(env_id, gid, "refresh_token", 1))
                batch.append(
                    (
                        gid, env_id, "bench", "oauth2", f"user-{i}", "", "active", '["api"]',
                        "Bearer", at, rt, expires_at, 1, last_refreshed or now, due_at, 0, "{}",
                        "import", now, now,
                    )
                )  # fmt: skip
                if len(batch) >= 20_000:
                    await conn.copy_records_to_table("grants", records=batch, columns=_COLS)
                    batch.clear()
            if batch:
                await conn.copy_records_to_table("grants", records=batch, columns=_COLS)
            await conn.execute("VACUUM ANALYZE grants")
        finally:
            await conn.close()

    asyncio.run(go())
    return ids


# ------------------------------------------------------------------ processes


def _env(db: Db, keys: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    env.update(
        GRANTKEEPER_DATABASE_URL=db.url,
        GRANTKEEPER_MASTER_KEYS=keys,
        GRANTKEEPER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        GRANTKEEPER_ALLOW_PRIVATE_NETWORKS="1",
        GRANTKEEPER_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.args})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.p = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        f = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def start_gk(
    db: Db, keys: str, tmp: Path, *, worker: bool = False, **extra: str
) -> tuple[Proc, str]:
    port = free_port()
    args = [PY, "-m", "grantkeeper.cli", "serve", "--port", str(port)]
    if not worker:
        args.append("--no-worker")
    p = Proc(args, _env(db, keys, port, **extra), tmp / f"gk-{port}.log")
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/readyz", p.p)
    return p, base


def start_reference(db: Db, keys: str, tmp: Path) -> tuple[Proc, str]:
    port = free_port()
    args = [
        PY, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
        "--log-level", "warning", "--port", str(port), "bench.reference:app",
    ]  # fmt: skip
    env = _env(db, keys, port, GK_REF_DSN=db.dsn)
    p = Proc(args, env, tmp / f"ref-{port}.log")
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/", p.p)
    return p, base


#: the required-work floor of the token read (shared/perf, next to the repository)
FLOOR = ROOT.parent / "shared" / "perf" / "floor_token_endpoint.py"


def start_floor(db: Db, keys: str, tmp: Path, audit: str) -> tuple[Proc, str]:
    """``floor_token_endpoint.py`` on the same database: the work the token read must do."""
    port = free_port()
    args = [
        PY, "-m", "uvicorn", "--app-dir", str(FLOOR.parent), "--loop", "uvloop", "--http",
        "httptools", "--no-access-log", "--log-level", "warning", "--port", str(port),
        "floor_token_endpoint:app",
    ]  # fmt: skip
    env = _env(
        db,
        keys,
        port,
        REQ_DATABASE=db.name,
        AUDIT=audit,
        PGPORT="5432",
        PGHOST="127.0.0.1",
        PGUSER="postgres",
    )
    p = Proc(args, env, tmp / f"floor-{audit}-{port}.log")
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/", p.p)
    return p, base


def start_token_endpoint(tmp: Path, delay: float = 0.0) -> tuple[Proc, str]:
    port = free_port()
    args = [PY, "-m", "bench.token_endpoint", str(port), "--delay", str(delay)]
    p = Proc(args, _env(Db("x"), "k:x", port), tmp / f"tokens-{port}.log")
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/stats", p.p)
    return p, base


def endpoint_stats(base: str) -> dict[str, int]:
    import httpx

    r: dict[str, int] = httpx.get(base + "/stats", timeout=5).json()
    return r


def put_integration(gk_base: str, admin_key: str, token_base: str) -> None:
    import httpx

    r = httpx.put(
        f"{gk_base}/v1/integrations/bench",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={
            "provider": "oauth2",
            "client_id": "bench-client",
            "client_secret": "bench-secret",
            "scopes": ["api"],
            "return_urls": ["http://127.0.0.1:9/done"],
            "endpoints": {
                "authorization_url": f"{token_base}/authorize",
                "token_url": f"{token_base}/token",
            },
        },
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text


# ------------------------------------------------------------------ wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def _ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    assert m, v
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60_000}[m.group(2)]


def wrk(
    base: str, ids_file: Path, key: str, *, conns: int, seconds: float, threads: int = 2
) -> WrkResult:
    env = dict(os.environ, GK_IDS=str(ids_file), GK_KEY=key)
    out = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(int(seconds), 1)}s", "--latency",
            "--timeout", "10s", "-s", str(WRK_LUA), base,
        ],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(g) for g in m.groups())
    return WrkResult(rps, p50, p99, n, errs)


def median_of(runs: list[WrkResult]) -> dict[str, Any]:
    return {
        "rps": round(statistics.median(r.rps for r in runs)),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 2),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 2),
        "errors": sum(r.errors for r in runs),
        "runs": [round(r.rps) for r in runs],
    }


def write_ids(ids: list[str], tmp: Path, name: str) -> Path:
    p = tmp / name
    p.write_text("\n".join(ids) + "\n")
    return p


# ------------------------------------------------------------------ benchmarks


@dataclass
class Plan:
    quick: bool
    only: set[str]
    #: proactive refresh: grants seeded (0: the default for quick/full), worker processes,
    #: and a py-spy profile of the first worker written here (None: no profile)
    grants: int = 0
    workers: int = 2
    profile: Path | None = None
    #: proactive: stop measuring after this many seconds (0: when all are refreshed)
    max_s: float = 0.0

    @property
    def seconds(self) -> float:
        return 5 if self.quick else 10

    @property
    def rounds(self) -> int:
        return 1 if self.quick else 3

    @property
    def big(self) -> int:
        return 200_000 if self.quick else 1_000_000

    @property
    def memory_reads(self) -> int:
        return 200_000 if self.quick else 1_000_000

    @property
    def proactive_grants(self) -> int:
        return self.grants or (20_000 if self.quick else 100_000)

    def wants(self, name: str) -> bool:
        return not self.only or name in self.only


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """A loopback OTLP/HTTP endpoint that accepts and drops spans (tracing-on runs)."""
    import http.server
    import threading

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


#: grantkeeper as operated: the access log on (INFO), as by default
GK_READ_ENV = {"GRANTKEEPER_LOG_LEVEL": "INFO"}


def bench_reads(plan: Plan, tmp: Path, results: dict[str, Any]) -> None:
    """Token read vs the reference, scale 10k vs 1M, memory, refresh storm: one database."""
    keys = master_key("b1")
    with bench_db("read") as db:
        env_id, admin = bootstrap(db, keys)
        far = time.time() + 30 * 86400
        t0 = time.monotonic()
        ids = seed(db, keys, env_id, 10_000, expires_at=far, due_at=far - 300)
        log(f"seeded 10,000 grants in {time.monotonic() - t0:.1f}s")
        tokens, tbase = start_token_endpoint(tmp, delay=0.05)
        gk, base = start_gk(db, keys, tmp, **GK_READ_ENV)
        ref: Proc | None = None
        traced: Proc | None = None
        sink = contextlib.ExitStack()
        try:
            put_integration(base, admin, tbase)
            warm = write_ids(ids, tmp, "ids-10k.txt")
            wrk(base, warm, admin, conns=64, seconds=3)
            t0 = time.monotonic()
            ids += seed(db, keys, env_id, 90_000, start=10_000, expires_at=far, due_at=far - 300)
            log(f"seeded to 100,000 grants in {time.monotonic() - t0:.1f}s")
            ids100 = write_ids(ids, tmp, "ids-100k.txt")
            if plan.wants("read"):
                ref, rbase = start_reference(db, keys, tmp)
                floors: list[tuple[str, Proc, str]] = []
                if FLOOR.exists():
                    for audit in ("inline", "group"):
                        fp, fbase = start_floor(db, keys, tmp, audit)
                        floors.append((f"floor_{audit}", fp, fbase))
                else:
                    log(f"no required-work floor at {FLOOR}: compared with the bare reference only")
                # the same server with tracing on (every request sampled, spans exported over
                # OTLP/HTTP to a loopback sink), when the otel extra is installed
                tbase_traced: str | None = None
                if importlib.util.find_spec("opentelemetry.sdk") is not None:
                    sink_url = sink.enter_context(otlp_sink())
                    traced, tbase_traced = start_gk(
                        db, keys, tmp, **GK_READ_ENV, GRANTKEEPER_OTEL_ENABLED="1",
                        OTEL_EXPORTER_OTLP_ENDPOINT=sink_url,
                    )  # fmt: skip
                sides: list[tuple[str, str]] = [("ref", rbase)]
                sides += [(n, b) for n, _p, b in floors]
                sides.append(("gk", base))
                if tbase_traced is not None:
                    sides.append(("gk_traced", tbase_traced))
                for _name, b in sides:
                    wrk(b, ids100, admin, conns=64, seconds=3)
                results["read_loadavg_start"] = [round(x, 1) for x in os.getloadavg()]
                for conns in (64, 32):
                    runs_by: dict[str, list[WrkResult]] = {n: [] for n, _b in sides}
                    for _ in range(plan.rounds):  # interleaved: same conditions for all
                        for n, b in sides:
                            runs_by[n].append(
                                wrk(b, ids100, admin, conns=conns, seconds=plan.seconds)
                            )
                    for n, runs_ in runs_by.items():
                        results[f"read_{n}_c{conns}"] = median_of(runs_)
                        log(f"c{conns} {n} {results[f'read_{n}_c{conns}']}")
                # CPU per request of each server process
                procs = {"ref": ref, "gk": gk, "gk_traced": traced}
                procs |= {n: p for n, p, _b in floors}
                for n, b in sides:
                    proc = procs[n]
                    if proc is None:
                        continue
                    spy = None
                    if plan.profile is not None and n == "gk" and not plan.wants("storm"):
                        spy = py_spy(proc.pid, plan.profile, seconds=plan.seconds - 1, rate=500)
                    c0 = proc.cpu_s()
                    r = wrk(b, ids100, admin, conns=64, seconds=plan.seconds)
                    if spy is not None:
                        spy.wait()
                    results[f"read_{n}_cpu_us"] = round((proc.cpu_s() - c0) / r.requests * 1e6)
                    log(f"cpu/request {n}: {results[f'read_{n}_cpu_us']} us")
                results["read_loadavg_end"] = [round(x, 1) for x in os.getloadavg()]
                for _name, fp, _b in floors:
                    fp.stop()
                if traced is not None:
                    traced.stop()
                    traced = None
                ref.stop()
                ref = None
            if plan.wants("memory"):
                results["memory"] = bench_memory(plan, gk, base, ids100, admin)
            if plan.wants("storm"):
                results["storm"] = bench_storm(
                    db, keys, env_id, base, admin, tbase, gk, plan.profile
                )
            if plan.wants("scale"):
                t0 = time.monotonic()
                n_more = plan.big - 100_000
                ids += seed(
                    db, keys, env_id, n_more, start=100_000, expires_at=far, due_at=far - 300
                )
                log(f"seeded to {len(ids):,} grants in {time.monotonic() - t0:.1f}s")
                big = write_ids(ids, tmp, "ids-big.txt")
                results.update(bench_scale(plan, tmp, keys, tbase, (base, big, admin)))
                results["scale_big"]["grants"] = len(ids) - 1
        finally:
            if ref is not None:
                ref.stop()
            if traced is not None:
                traced.stop()
            sink.close()
            gk.stop()
            tokens.stop()


def bench_scale(
    plan: Plan, tmp: Path, keys: str, tbase: str, big: tuple[str, Path, str]
) -> dict[str, Any]:
    """Token reads at 10,000 grants vs the big table, round by round interleaved: two
    servers, two databases, so a change of the machine's load hits both sides alike."""
    base, big_ids, big_key = big
    with bench_db("small") as small_db:
        env_id, admin = bootstrap(small_db, keys)
        far = time.time() + 30 * 86400
        ids = seed(small_db, keys, env_id, 10_000, expires_at=far, due_at=far - 300)
        small, sbase = start_gk(small_db, keys, tmp, **GK_READ_ENV)
        try:
            put_integration(sbase, admin, tbase)
            small_ids = write_ids(ids, tmp, "ids-small.txt")
            sides = {"scale_10k": (sbase, small_ids, admin), "scale_big": (base, big_ids, big_key)}
            for b, f, k in sides.values():
                wrk(b, f, k, conns=64, seconds=3)
            runs: dict[str, list[WrkResult]] = {n: [] for n in sides}
            loads: list[float] = []
            for _ in range(max(plan.rounds, 3)):
                loads.append(round(os.getloadavg()[0], 1))
                for n, (b, f, k) in sides.items():
                    runs[n].append(wrk(b, f, k, conns=64, seconds=plan.seconds))
        finally:
            small.stop()
    out = {n: median_of(r) | {"loadavg": loads, "interleaved": True} for n, r in runs.items()}
    log(f"scale: {out}")
    return out


def bench_memory(plan: Plan, gk: Proc, base: str, ids: Path, key: str) -> dict[str, Any]:
    """RSS of the server over ``memory_reads`` token reads (wrk in slices)."""
    probe = wrk(base, ids, key, conns=64, seconds=3)
    total = 0
    samples = [(0, round(gk.rss_mb(), 1))]
    slice_s = max(plan.memory_reads / probe.rps / 10, 2.0)
    while total < plan.memory_reads:
        r = wrk(base, ids, key, conns=64, seconds=slice_s)
        total += r.requests
        samples.append((total, round(gk.rss_mb(), 1)))
    log(f"memory: {samples}")
    first = samples[1][1]
    return {
        "reads": total,
        "rss_start_mb": samples[0][1],
        "rss_after_first_slice_mb": first,
        "rss_end_mb": samples[-1][1],
        "rss_max_mb": max(s[1] for s in samples),
        "samples": samples,
    }


def _run_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed (a load generator as cheap as the server's loop)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def py_spy(pid: int, out: Path, *, seconds: float, rate: int) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` (CPU samples, without pausing it) to ``out``: an svg, or
    the raw collapsed stacks for a ``.txt``."""
    return subprocess.Popen(
        [str(Path(PY).with_name("py-spy")), "record", "--nonblocking", "-r", str(rate),
         "-d", str(max(1, round(seconds))), "-f", "raw" if out.suffix == ".txt" else "flamegraph",
         "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def bench_storm(
    db: Db,
    keys: str,
    env_id: str,
    base: str,
    admin: str,
    tbase: str,
    gk: Proc,
    profile: Path | None = None,
) -> dict[str, Any]:

    now = time.time()
    (gid,) = seed(
        db, keys, env_id, 1, start=9_999_999, expires_at=now - 60, due_at=None,
        last_refreshed=now - 3660,
    )  # fmt: skip
    before = endpoint_stats(tbase)["calls"]
    n = 1000

    host, port = base.rsplit("//", 1)[1].split(":")
    req = (
        f"POST /v1/grants/{gid}/token HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {admin}\r\nContent-Type: application/json\r\n"
        "Content-Length: 2\r\n\r\n{}"
    ).encode()

    class Caller(asyncio.Protocol):
        """One pre-opened connection: sends the request when told, notes when the whole
        answer has arrived (no task, no stream reader: the client must cost far less
        than the server, or the storm measures the client)."""

        def __init__(self, done: asyncio.Future[None], left: list[int]) -> None:
            self.done, self.left = done, left
            self.buf = b""
            self.took = 0.0
            self.status = 0
            self.token = ""
            self.t0 = 0.0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

        def data_received(self, data: bytes) -> None:
            self.buf += data
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buf) - head_end - 4 < length:
                return
            self.took = time.perf_counter() - self.t0
            self.status = int(head.split(b" ", 2)[1])
            body = json.loads(self.buf[head_end + 4 : head_end + 4 + length])
            self.token = body.get("access_token", "")
            self.transport.close()
            self.left[0] -= 1
            if not self.left[0] and not self.done.done():
                self.done.set_result(None)

    async def go() -> tuple[list[float], list[int], set[str], float]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        left = [n]
        callers: list[Caller] = []
        for _ in range(n):
            c = Caller(done, left)
            await loop.create_connection(lambda c=c: c, host, int(port))  # type: ignore[misc]
            callers.append(c)
        await asyncio.sleep(0.5)
        if spy is not None:
            await asyncio.sleep(1.5)  # py-spy attached before the gate opens
        # CPU from the gate on (opening 1,000 connections is not the storm)
        cpu0[0], cpu0[1] = gk.cpu_s(), time.process_time()
        gate_at[0] = time.time()
        t0 = time.perf_counter()
        for c in callers:  # released at once: every request is written in this loop turn
            c.t0 = t0
            c.transport.write(req)
        await asyncio.wait_for(done, 60)
        wall = time.perf_counter() - t0
        return (
            [c.took for c in callers],
            [c.status for c in callers],
            {c.token for c in callers},
            wall,
        )

    # the server's stacks during the storm (1 kHz: the storm lasts well under a second)
    spy = py_spy(gk.pid, profile, seconds=4, rate=1000) if profile is not None else None
    cpu0 = [0.0, 0.0]
    gate_at = [0.0]
    lat, statuses, tokens, wall = _run_uvloop(go())
    cpu = gk.cpu_s() - cpu0[0]
    client_cpu = time.process_time() - cpu0[1]
    if spy is not None:
        spy.wait()
    st = endpoint_stats(tbase)
    calls = st["calls"] - before
    lat_ms = sorted(x * 1000 for x in lat)

    def pct(p: float) -> float:
        return round(lat_ms[min(int(len(lat_ms) * p), len(lat_ms) - 1)], 1)

    res = {
        "requests": n,
        "ok": sum(1 for s in statuses if s == 200),
        "distinct_tokens": len(tokens),
        "upstream_refreshes": calls,
        "upstream_delay_ms": 50,
        # when the provider was called, and when the first answer arrived (after the gate)
        "upstream_called_ms": round((st["last_call_at"] - gate_at[0]) * 1000, 1),
        "min_ms": round(lat_ms[0], 1),
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": round(lat_ms[-1], 1),
        "wall_s": round(wall, 2),
        # the server's CPU for the whole storm: comparable across machine loads
        "server_cpu_ms": round(cpu * 1000),
        # the load generator's (this process): it shares the cores with the server
        "client_cpu_ms": round(client_cpu * 1000),
        "loadavg": round(os.getloadavg()[0], 1),
    }
    log(f"storm: {res}")
    return res


def bench_proactive(plan: Plan, tmp: Path, results: dict[str, Any]) -> None:
    keys = master_key("p1")
    n = plan.proactive_grants
    with bench_db("refresh") as db:
        env_id, admin = bootstrap(db, keys)
        tokens, tbase = start_token_endpoint(tmp)
        try:
            gk, base = start_gk(db, keys, tmp)
            put_integration(base, admin, tbase)
            gk.stop()
            t_seed = time.time()
            # 10 minutes for 100k; a million cannot all be due at once and expire within
            # 10 minutes at the goal's rate, so they get an hour (one-hour tokens)
            expiry = t_seed + (600 if n <= 200_000 else 3600)
            # all due at once: the worst case of "falling due within 10 minutes"
            seed(
                db, keys, env_id, n, expires_at=expiry, due_at=t_seed - 1,
                last_refreshed=t_seed - 3000,
            )  # fmt: skip
            nw = plan.workers
            log(f"seeded {n:,} due grants in {time.time() - t_seed:.1f}s; starting {nw} worker(s)")
            workers = []
            wenv = _env(db, keys, 8080, GRANTKEEPER_WORKER_INTERVAL="0.5")
            load0 = os.getloadavg()
            t0 = time.time()
            for i in range(nw):
                workers.append(
                    Proc([PY, "-m", "grantkeeper.cli", "worker"], wenv, tmp / f"worker{i}.log")
                )
            spy: subprocess.Popen[bytes] | None = None
            if plan.profile is not None:
                # 10 s in: the profile shows the running worker, not its start-up
                spy = subprocess.Popen(
                    ["bash", "-c", 'sleep 10; exec "$@"', "spy",
                     str(Path(PY).with_name("py-spy")), "record", "--gil", "-r", "100", "-d",
                     "60", "-f", "raw" if plan.profile.suffix == ".txt" else "flamegraph",
                     "-o", str(plan.profile), "-p", str(workers[0].pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            deadline = expiry + 30
            if plan.max_s:
                deadline = min(deadline, time.time() + plan.max_s)
            progress: list[tuple[float, int]] = []

            async def count_left() -> int:
                c = await asyncpg.connect(db.dsn)
                try:
                    return int(await c.fetchval("SELECT count(*) FROM grants WHERE version = 1"))
                finally:
                    await c.close()

            left = n
            while left and time.time() < deadline:
                time.sleep(2)
                # progress from the endpoint's counter: a count(*) over the grants every
                # 2 s would cost PostgreSQL (on the same two cores) a scan of the table;
                # the exact count only once every grant has been called
                calls = endpoint_stats(tbase)["calls"]
                if calls >= n:
                    left = asyncio.run(count_left())
                    progress.append((round(time.time() - t0, 1), n - left))
                else:
                    progress.append((round(time.time() - t0, 1), calls))
            if left:
                left = asyncio.run(count_left())
            wall = time.time() - t0
            load1 = os.getloadavg()
            cpu = [w.cpu_s() for w in workers]
            endpoint_cpu = tokens.cpu_s()
            if spy is not None:
                spy.wait(timeout=120)
            for w in workers:
                w.stop()

            async def verify() -> dict[str, Any]:
                c = await asyncpg.connect(db.dsn)
                try:
                    row = await c.fetchrow(
                        "SELECT count(*) FILTER (WHERE version = 2) AS once, "
                        "count(*) FILTER (WHERE version > 2) AS more, "
                        "max(last_refreshed_at) AS last, "
                        "percentile_cont(0.5) WITHIN GROUP (ORDER BY last_refreshed_at) "
                        "FILTER (WHERE version > 1) AS mid, "
                        "percentile_cont(0.99) WITHIN GROUP (ORDER BY last_refreshed_at) "
                        "FILTER (WHERE version > 1) AS p99 "
                        "FROM grants"
                    )
                    per_grant = await c.fetchval(
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM audit_events "
                        "WHERE action = 'grant.refreshed' GROUP BY grant_id) s"
                    )
                    return {
                        "refreshed_once": row["once"],
                        "refreshed_more": row["more"],
                        "last": row["last"],
                        "mid": row["mid"],
                        "p99": row["p99"],
                        "max_refreshed_audit_per_grant": per_grant,
                    }
                finally:
                    await c.close()

            v = asyncio.run(verify())
            st = endpoint_stats(tbase)
            # sustained rate: from the first to the last sample (ramp-up included)
            due = t_seed - 1
            res = {
                "grants": n,
                "workers": nw,
                "refreshed": n - left,
                "all_before_expiry": left == 0 and v["last"] is not None and v["last"] < expiry,
                "drain_s": round(wall, 1),
                "refreshes_per_s": round((n - left) / wall),
                "refreshes_per_s_per_worker": round((n - left) / wall / nw),
                # per core second of worker CPU (the worker is one process on one core)
                "refreshes_per_worker_cpu_s": round((n - left) / max(sum(cpu), 0.001)),
                # lag behind the due time (all were due at t_seed - 1): median, p99, max
                "lag_s": [round((v[k] or due) - due, 1) for k in ("mid", "p99", "last")],
                "loadavg_before_after": [round(load0[0], 1), round(load1[0], 1)],
                "upstream_calls": st["calls"],
                "double_refreshes": st["duplicates"] + v["refreshed_more"],
                "max_refreshed_audit_per_grant": v["max_refreshed_audit_per_grant"],
                "worker_cpu_s": [round(c, 1) for c in cpu],
                "endpoint_cpu_s": round(endpoint_cpu, 1),
                "worker_cpu_pct": [round(100 * c / wall) for c in cpu],
                "headroom_s": round(expiry - (v["last"] or expiry), 1),
                # --max-s ended the measurement before every grant was refreshed
                "stopped_early": bool(plan.max_s) and left > 0,
                "progress": progress[:: max(len(progress) // 10, 1)],
            }
            # one worker is the throughput goal; two workers the "zero doubles" one
            key = "proactive_1m" if n > 200_000 else "proactive" if nw == 1 else "proactive_2w"
            results[key] = res
            log(f"proactive: {res}")
        finally:
            tokens.stop()


def bench_crypto(plan: Plan, tmp: Path, results: dict[str, Any]) -> None:
    from grantkeeper.grants import token_aad
    from grantkeeper.rotation import rotate
    from grantkeeper.store.db import create_engine
    from grantkeeper.vault import Keyring, Vault

    old = master_key("r1")
    vault = Vault(Keyring.parse(old))
    token = secrets.token_urlsafe(TOKEN_LEN)[:TOKEN_LEN]
    aad = token_aad("env", str(uuid.uuid4()), "access_token", 1)
    n = 20_000
    t = time.perf_counter()
    blobs = [vault.seal(token, aad) for _ in range(n)]
    seal_us = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for b in blobs:
        vault.open(b, aad)
    open_us = (time.perf_counter() - t) / n * 1e6
    results["crypto"] = {
        "token_bytes": TOKEN_LEN,
        "seal_us": round(seal_us, 1),
        "open_us": round(open_us, 1),
    }
    grants_n = 5_000 if plan.quick else 20_000
    with bench_db("rotate") as db:
        env_id, _admin = bootstrap(db, old)
        seed(db, old, env_id, grants_n, expires_at=time.time() + 3600, due_at=None)
        new_ring = Keyring.parse(master_key("r2") + "," + old)
        settings = settings_for(db, new_ring_spec(new_ring))

        async def go() -> tuple[float, int]:
            engine = create_engine(settings)
            try:
                t0 = time.perf_counter()
                rep = await rotate(engine, Vault(new_ring))
                return time.perf_counter() - t0, rep.rewrapped
            finally:
                await engine.dispose()

        secs, rewrapped = asyncio.run(go())
    results["crypto"] |= {
        "rotation_grants": grants_n,
        "rotation_rewrapped": rewrapped,
        "rotation_s": round(secs, 2),
        "rotation_grants_per_s": round(rewrapped / secs),
    }
    log(f"crypto: {results['crypto']}")


def unsealed_vault(db: Db, keys: str) -> Any:
    """The vault a server with ``keys`` unseals from ``db`` (its keyring, format v2)."""
    from grantkeeper.runtime import unseal
    from grantkeeper.store.db import create_engine

    async def go() -> Any:
        settings = settings_for(db, keys)
        engine = create_engine(settings)
        try:
            return (await unseal(settings, engine)).vault
        finally:
            await engine.dispose()

    return asyncio.run(go())


def start_moto(tmp: Path) -> tuple[Proc, dict[str, str], str]:
    """A real KMS endpoint on loopback (moto in server mode) and a key in it: (proc, env, ARN)."""
    import boto3

    port = free_port()
    exe = str(Path(PY).with_name("moto_server"))
    p = Proc([exe, "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), tmp / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    _wait_http(endpoint + "/moto-api/", p.p)
    env = {
        "AWS_ENDPOINT_URL_KMS": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }
    kms = boto3.client(
        "kms",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    arn = kms.create_key(KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]["Arn"]
    return p, env, str(arn)


def bench_kms(plan: Plan, tmp: Path, results: dict[str, Any]) -> None:
    """Token reads with an AWS KMS root vs a local root (both format v2 under a keyring):
    the keyring is in memory, so a read never calls the KMS; with the KMS stopped
    (SIGSTOP) mid-run the reads go on."""
    moto, aws_env, arn = start_moto(tmp)
    os.environ.update(aws_env)  # for this process's unseal (seeding) as well
    n = 10_000 if plan.quick else 100_000
    out: dict[str, Any] = {"grants": n}
    try:
        for label, keys in (("local", master_key("l1")), ("aws_kms", f"k1:aws-kms:{arn}")):
            with bench_db(f"kms_{label}") as db:
                env_id, admin = bootstrap(db, keys)
                far = time.time() + 30 * 86400
                vault = unsealed_vault(db, keys)
                ids = seed(db, keys, env_id, n, expires_at=far, due_at=far - 300, vault=vault)
                tokens, tbase = start_token_endpoint(tmp)
                gk, base = start_gk(db, keys, tmp, **aws_env)
                try:
                    put_integration(base, admin, tbase)
                    path = write_ids(ids, tmp, f"ids-kms-{label}.txt")
                    wrk(base, path, admin, conns=64, seconds=3)
                    runs = [
                        wrk(base, path, admin, conns=64, seconds=plan.seconds)
                        for _ in range(plan.rounds)
                    ]
                    out[label] = median_of(runs)
                    if label == "aws_kms":
                        moto.p.send_signal(signal.SIGSTOP)
                        try:
                            out["aws_kms_stopped"] = median_of(
                                [wrk(base, path, admin, conns=64, seconds=plan.seconds)]
                            )
                        finally:
                            moto.p.send_signal(signal.SIGCONT)
                    log(f"kms {label}: {out[label]}")
                finally:
                    gk.stop()
                    tokens.stop()
    finally:
        moto.stop()
    results["kms"] = out


def new_ring_spec(ring: Any) -> str:
    return ",".join(f"{k}:{base64.b64encode(m).decode()}" for k, m in ring.keys)


# ------------------------------------------------------------------ report


def machine() -> dict[str, str]:
    def sh(*a: str) -> str:
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]

    async def pgv() -> str:
        c = await asyncpg.connect(f"{PG}/postgres")
        try:
            v = await c.fetchval("SHOW server_version")
            sb = await c.fetchval("SHOW shared_buffers")
            sc = await c.fetchval("SHOW synchronous_commit")
            return f"{v} (shared_buffers {sb}, synchronous_commit {sc})"
        finally:
            await c.close()

    from importlib.metadata import version

    pkgs = ["uvicorn", "fastapi", "starlette", "sqlalchemy", "asyncpg", "cryptography", "orjson"]
    pkgs += ["uvloop", "httptools", "aiohttp"]
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{int(mem) // 1024:,} MiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": asyncio.run(pgv()),
        "wrk": sh("wrk", "-v").splitlines()[0] if sh("wrk", "-v") else "?",
        "packages": ", ".join(f"{p} {version(p)}" for p in pkgs),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def render(results: dict[str, Any]) -> str:
    from bench.report import render as r

    return r(results)


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs, smaller data (~5 min)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="run only these (repeatable)")
    ap.add_argument("--no-write", action="store_true", help="print results, leave docs alone")
    ap.add_argument("--grants", type=int, default=0, help="proactive: grants to seed")
    ap.add_argument("--workers", type=int, default=2, help="proactive: worker processes")
    ap.add_argument(
        "--profile",
        type=Path,
        help="py-spy profile (.svg, or .txt: raw stacks): proactive: of worker 0; storm: of the server during the storm; read (without storm): of the server during its CPU run",
    )
    ap.add_argument("--max-s", type=float, default=0.0, help="proactive: stop after N seconds")
    a = ap.parse_args()
    plan = Plan(
        quick=a.quick,
        only=set(a.only or ()),
        grants=a.grants,
        workers=a.workers,
        profile=a.profile.resolve() if a.profile else None,
        max_s=a.max_s,
    )
    for tool in ("wrk",):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            sys.exit(f"{tool} is not installed: apt-get install -y wrk")
    if plan.profile is not None and not Path(PY).with_name("py-spy").exists():
        sys.exit("--profile needs py-spy in this environment: .venv/bin/pip install py-spy")
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    results: dict[str, Any] = {}
    if plan.only and RESULTS.exists():
        results = json.loads(RESULTS.read_text())
    results["machine"] = machine()
    results["quick"] = plan.quick
    t_all = time.monotonic()
    random.seed()
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as d:
        tmp = Path(d)
        if any(plan.wants(s) for s in ("read", "scale", "memory", "storm")):
            bench_reads(plan, tmp, results)
        if plan.wants("proactive"):
            bench_proactive(plan, tmp, results)
        if plan.wants("crypto"):
            bench_crypto(plan, tmp, results)
        if plan.wants("kms"):
            bench_kms(plan, tmp, results)
    if not plan.only:
        results["suite_s"] = round(time.monotonic() - t_all)
        results.pop("notes_run", None)
    log(f"done in {results['suite_s']}s")
    if a.no_write:
        print(json.dumps(results, indent=2))
        return
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    DOC.write_text(render(results))
    log(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
