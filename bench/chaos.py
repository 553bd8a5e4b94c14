"""Chaos harness: does grantkeeper keep every grant alive while its processes, its database
and its provider misbehave? (issue 12, "What to build" item 8)

    ./scripts/chaos [--duration 600] [--grants 1000] [--api 3] [--workers 2] [--seed N]

On PostgreSQL: ``--api`` API processes (``serve --no-worker``) and ``--workers`` workers
(``grantkeeper worker``) share one database; ``--grants`` grants are connected through the
real oidc-provider (tests/oidc_server: refresh-token rotation on every use, reuse
detection that revokes the whole grant, access tokens of ``--access-ttl`` seconds, 30-60).
Reader threads ask every API process for tokens while, at random for ``--duration``
seconds: ``kill -9`` and SIGTERM of API and worker processes (restarted), a restart of
PostgreSQL (only of a private cluster the harness creates itself with ``initdb`` on a free
loopback port; never a shared server), provider 5xx answers, split and delayed/held
answers (the test provider's fault modes).

At the end it stops the chaos, lets things settle, forces one refresh of every grant and
reports (markdown table on stdout, JSON with ``--json-out``):

- grants lost: grants that are ``invalid`` or whose refresh fails at the end;
- kill windows: refresh answers the provider sent to a process shortly (``--window``
  seconds) before it was ``kill -9``-ed, or that were in flight then: the only excuse
  for a lost grant (counted from the provider's log of answers and the victim's
  connections at the moment of the kill, ``ss -tnp``);
- refresh tokens presented twice (counted by the provider: a consumed refresh token
  presented again);
- 5xx answers other than 503 seen by the readers and the final checks;
- ``grantkeeper audit verify``;
- webhook events delivered / emitted.

Not part of the test suite (it takes minutes); ``--duration 60 --grants 30`` is a smoke run.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import http.server
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ PostgreSQL


class Postgres:
    """A private cluster (initdb in a temp dir, own loopback port), else the shared server
    with a fresh database (and then no PostgreSQL restarts)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.private = False
        self.port = 5432
        self.bin: Path | None = None
        self.datadir = tmp / "pgdata"
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if bins:
            self.bin = bins[-1].parent

    def _as_pg(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def start(self) -> str:
        if self.bin is not None and (os.geteuid() != 0 or shutil.which("runuser")):
            try:
                self.port = free_port()
                self.datadir.mkdir()
                if os.geteuid() == 0:
                    shutil.chown(self.tmp, "postgres")
                    shutil.chown(self.datadir, "postgres")
                    os.chmod(self.tmp, 0o755)
                subprocess.run(
                    self._as_pg(str(self.bin / "initdb"), "-D", str(self.datadir), "-A", "trust",
                                "-U", "postgres", "-N"),
                    check=True, capture_output=True,
                )  # fmt: skip
                self.private = True
                self._ctl("start")
                self._createdb()
                return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/chaos"
            except (subprocess.CalledProcessError, OSError) as exc:
                log(f"no private PostgreSQL cluster ({exc}); using the shared one, no restarts")
                self.private = False
                self.port = 5432
        name = "gk_chaos_" + secrets.token_hex(4)
        self._shared_db = name
        _psql(5432, "test", f'CREATE DATABASE "{name}"')
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"

    def _ctl(self, action: str) -> None:
        assert self.bin is not None
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.tmp} "
            "-c max_connections=400 -c shared_buffers=64MB"
        )
        args = [str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "-l",
                str(self.tmp / "postgres.log")]  # fmt: skip
        if action in ("start", "restart"):
            args += ["-o", opts]
        if action in ("stop", "restart"):
            args += ["-m", "fast"]
        subprocess.run(self._as_pg(*args, action), check=True, capture_output=True)

    def _createdb(self) -> None:
        _psql(self.port, "postgres", "CREATE DATABASE chaos")

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        if self.private:
            with contextlib.suppress(Exception):
                self._ctl("stop")
        elif getattr(self, "_shared_db", None):
            with contextlib.suppress(Exception):
                _psql(5432, "test", f'DROP DATABASE IF EXISTS "{self._shared_db}" WITH (FORCE)')


def _psql(port: int, db: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/{db}")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def _pg_fetch(url: str, sql: str) -> list[Any]:
    import asyncio

    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


# ------------------------------------------------------------------ grantkeeper processes


@dataclass
class GkProc:
    kind: str  # api | worker
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    p: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [PY, "-m", "grantkeeper.cli"]
        if self.kind == "api":
            args += ["serve", "--no-worker", "--port", str(self.port)]
        else:
            args += ["worker"]
        with open(self.log_path, "ab") as out:
            self.p = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)  # fmt: skip
        if self.kind == "api":
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if self.p.poll() is not None:
                    raise RuntimeError(f"API process exited early; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                        return
                time.sleep(0.2)
            raise RuntimeError(f"API process not ready; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def signal(self, sig: int) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(sig)

    def wait(self, timeout: float) -> float | None:
        t = time.monotonic()
        assert self.p is not None
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - t

    def stop(self) -> None:
        if self.alive:
            self.signal(signal.SIGTERM)
            if self.wait(20) is None:
                self.signal(signal.SIGKILL)
                self.wait(10)


def provider_ports_of(pid: int, provider_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to the provider (``ss -tnp``)."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    ports: set[int] = set()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        cols = line.split()
        if len(cols) < 5:
            continue
        local, peer = cols[3], cols[4]
        if peer.endswith(f":{provider_port}"):
            with contextlib.suppress(ValueError):
                ports.add(int(local.rsplit(":", 1)[1]))
    return ports


# ------------------------------------------------------------------ webhook sink


class Sink:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.by_type: collections.Counter[str] = collections.Counter()
        sink = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                wid = self.headers.get("webhook-id", "")
                if wid not in sink.ids:
                    sink.ids.add(wid)
                    with contextlib.suppress(Exception):
                        sink.by_type[json.loads(body)["type"]] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ------------------------------------------------------------------ the run


def token_tag(token: str) -> str:
    """The test provider's tag of a token (tests/oidc_server: sha256, 16 hex digits)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass
class Tally:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    codes_5xx: collections.Counter[str] = field(default_factory=collections.Counter)
    unreachable: int = 0
    #: grant id -> tags of the access tokens handed out for it (ties it to the provider's grant)
    seen: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, r: httpx.Response, grant_id: str | None = None) -> None:
        tag = None
        if r.status_code == 200 and grant_id is not None:
            with contextlib.suppress(Exception):
                tag = token_tag(r.json()["access_token"])
        with self.lock:
            if tag is not None:
                self.seen[grant_id].add(tag)  # type: ignore[index]
            self.statuses[r.status_code] += 1
            if r.status_code >= 500 and r.status_code != 503:
                code = "?"
                with contextlib.suppress(Exception):
                    code = str(r.json().get("code"))
                self.codes_5xx[f"{r.status_code} {code}"] += 1


@dataclass
class Events:
    actions: collections.Counter[str] = field(default_factory=collections.Counter)
    #: (time of the kill, the victim's connections to the provider then, victim name)
    kills: list[tuple[float, set[int], str]] = field(default_factory=list)
    sigterm_exit_s: list[float] = field(default_factory=list)
    sigterm_hung: int = 0


def main() -> None:  # noqa: C901 (one linear script)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of chaos (600)")
    ap.add_argument("--grants", type=int, default=1000)
    ap.add_argument("--api", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--readers", type=int, default=4, help="token-reading threads")
    ap.add_argument("--access-ttl", type=int, default=45, help="access token lifetime (30-60)")
    ap.add_argument("--interval", type=float, nargs=2, default=(3.0, 8.0),
                    help="seconds between chaos actions (min max)")  # fmt: skip
    ap.add_argument("--window", type=float, default=5.0,
                    help="seconds before a kill -9 in which a provider answer counts as in its window")  # fmt: skip
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    from tests.support import oidc as oidc_support
    from tests.support.oidc import OidcServer, authorize

    fault_modes = getattr(oidc_support, "FAULT_MODES", None) or getattr(
        oidc_support, "TOKEN_FAULT_MODES", frozenset()
    )

    tmp = Path(tempfile.mkdtemp(prefix="gk-chaos-"))
    log(f"work dir {tmp}")
    pg = Postgres(tmp)
    oidc: OidcServer | None = None
    procs: list[GkProc] = []
    started = time.time()
    try:
        db_url = pg.start()
        log(
            f"PostgreSQL: {'private cluster on port ' + str(pg.port) if pg.private else 'shared server'}"
        )
        oidc = OidcServer(log_path=tmp / "oidc.log").start()
        oidc.set_ttl(AccessToken=args.access_ttl)
        keys = f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
        api_ports = [free_port() for _ in range(args.api)]
        public = f"http://127.0.0.1:{api_ports[0]}"

        def env(port: int | None) -> dict[str, str]:
            e = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
            e.update(
                GRANTKEEPER_DATABASE_URL=db_url,
                GRANTKEEPER_MASTER_KEYS=keys,
                GRANTKEEPER_PUBLIC_URL=public,
                GRANTKEEPER_ALLOW_PRIVATE_NETWORKS="1",
                GRANTKEEPER_LOG_LEVEL="WARNING",
                GRANTKEEPER_HTTP_TIMEOUT="10",
                GRANTKEEPER_WEBHOOK_RETRY_BASE="0.5",
                # this checkout's code, whatever is installed in the environment
                PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
                PYTHONUNBUFFERED="1",
            )
            return e

        for i, port in enumerate(api_ports):
            procs.append(GkProc("api", env(port), tmp / f"api-{i}.log", port))
        for i in range(args.workers):
            procs.append(GkProc("worker", env(None), tmp / f"worker-{i}.log"))
        procs[0].start()  # the first start migrates and prints the admin key
        m = re.search(rb"GRANTKEEPER_ADMIN_KEY=(\S+)", procs[0].log_path.read_bytes())
        if m is None:
            raise RuntimeError("no admin key printed on first start")
        admin = m.group(1).decode()
        for p in procs[1:]:
            p.start()
        apis = [p for p in procs if p.kind == "api"]
        workers = [p for p in procs if p.kind == "worker"]
        hdr = {"Authorization": f"Bearer {admin}"}

        client_id, secret = oidc.register_client([public + "/oauth/callback"])
        sink = Sink()
        with httpx.Client(base_url=public, headers=hdr, timeout=30) as c:
            c.put("/v1/integrations/chaos", json={
                "provider": "oidc", "issuer": oidc.issuer, "client_id": client_id,
                "client_secret": secret, "scopes": ["openid", "offline_access", "api:read"],
                "return_urls": ["http://127.0.0.1:9/app"],
            }).raise_for_status()  # fmt: skip
            c.post(
                "/v1/webhook-endpoints", json={"url": sink.url, "events": ["*"]}
            ).raise_for_status()

        # -------------------------------------------------------------- connect the grants
        log(f"connecting {args.grants} grants through the provider ...")
        oidc.set_account("alice")
        grant_ids: list[str] = []
        connect_failures = 0
        gl = threading.Lock()

        def connect_some(idx: list[int]) -> None:
            nonlocal connect_failures
            with httpx.Client(base_url=public, headers=hdr, timeout=60) as c:
                for i in idx:
                    try:
                        s = c.post("/v1/connect/sessions", json={
                            "integration_id": "chaos", "user_id": f"chaos-{i}",
                            "return_to": "http://127.0.0.1:9/app/done"}).json()  # fmt: skip
                        out = authorize(
                            s["connect_url"], stop_origin=public, follow_origins=[oidc.origin]
                        )
                        gid = out.query.get("grant_id")
                    except Exception:
                        gid = None
                    with gl:
                        if gid:
                            grant_ids.append(gid)
                        else:
                            connect_failures += 1

        chunks = [list(range(k, args.grants, 6)) for k in range(6)]
        ts = [threading.Thread(target=connect_some, args=(ch,)) for ch in chunks]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        log(f"{len(grant_ids)} grants connected ({connect_failures} connects failed)")

        # -------------------------------------------------------------- readers
        tally = Tally()
        stop = threading.Event()

        def reader() -> None:
            with httpx.Client(headers=hdr, timeout=30) as c:
                while not stop.is_set():
                    api = rng.choice(apis)
                    gid = rng.choice(grant_ids)
                    body = {"min_ttl": rng.choice((0, 10, 20))}
                    if rng.random() < 0.01:
                        body["force_refresh"] = True
                    try:
                        tally.add(c.post(f"{api.base}/v1/grants/{gid}/token", json=body), gid)
                    except httpx.HTTPError:
                        with tally.lock:
                            tally.unreachable += 1
                        time.sleep(0.05)

        readers = [threading.Thread(target=reader, daemon=True) for _ in range(args.readers)]
        for t in readers:
            t.start()

        # -------------------------------------------------------------- chaos
        ev = Events()
        has = set(fault_modes)
        actions = [
            "kill9_api",
            "kill9_worker",
            "sigterm_api",
            "sigterm_worker",
            "provider_5xx",
            "delay",
        ]
        if "split" in has:
            actions.append("split")
        if "hold" in has:
            actions.append("hold")
        if pg.private:
            actions.append("pg_restart")
        log(f"chaos for {args.duration:.0f} s: {', '.join(actions)}")
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            time.sleep(rng.uniform(*args.interval))
            act = rng.choice(actions)
            ev.actions[act] += 1
            try:
                if act.startswith("kill9"):
                    victim = rng.choice(apis if act.endswith("api") else workers)
                    if victim.p is not None and victim.alive:
                        # frozen first: under load `ss` takes a while, and a connection the
                        # victim opened meanwhile would be missing from the snapshot
                        victim.signal(signal.SIGSTOP)
                        ports = provider_ports_of(victim.p.pid, oidc.port)
                        victim.signal(signal.SIGKILL)
                        ev.kills.append((time.time(), ports, victim.log_path.stem))
                        victim.wait(10)
                    time.sleep(rng.uniform(0.2, 2.0))
                    victim.restarts += 1
                    victim.start()
                elif act.startswith("sigterm"):
                    victim = rng.choice(apis if act.endswith("api") else workers)
                    victim.signal(signal.SIGTERM)
                    took = victim.wait(30)
                    if took is None:
                        ev.sigterm_hung += 1
                        victim.signal(signal.SIGKILL)
                        victim.wait(10)
                    else:
                        ev.sigterm_exit_s.append(took)
                    victim.restarts += 1
                    victim.start()
                elif act == "pg_restart":
                    pg.restart()
                elif act == "provider_5xx":
                    n = rng.randint(3, 20)
                    oidc.faults(
                        token=[{"mode": "status", "status": rng.choice((500, 502, 503))}] * n
                    )
                elif act == "delay":
                    oidc.faults(
                        token=[{"mode": "delay", "ms": rng.randint(500, 4000)}] * rng.randint(1, 5)
                    )
                elif act == "split":
                    oidc.faults(
                        token=[{"mode": "split", "chunk": rng.randint(3, 20), "pause_ms": 30}]
                        * rng.randint(1, 10)
                    )
                elif act == "hold":
                    oidc.faults(
                        token=[{"mode": "hold", "ms": rng.randint(1000, 6000)}] * rng.randint(1, 3)
                    )
            except Exception as exc:  # the harness keeps going; the report shows what happened
                log(f"action {act} failed: {type(exc).__name__}: {exc}")
                for p in procs:
                    if not p.alive:
                        with contextlib.suppress(Exception):
                            p.start()
        with contextlib.suppress(Exception):
            oidc.release()
        for p in procs:
            if not p.alive:
                p.start()
        log("chaos over; settling ...")
        time.sleep(max(10.0, args.access_ttl * 0.5))
        stop.set()
        for t in readers:
            t.join(timeout=40)

        # -------------------------------------------------------------- final checks
        final = Tally()
        lost_ids: list[str] = []

        def check(ids: list[str]) -> None:
            with httpx.Client(headers=hdr, timeout=60) as c:
                for gid in ids:
                    api = apis[hash(gid) % len(apis)]
                    for _attempt in range(5):
                        try:
                            r = c.post(
                                f"{api.base}/v1/grants/{gid}/token", json={"force_refresh": True}
                            )
                        except httpx.HTTPError:
                            time.sleep(1)
                            continue
                        final.add(r, gid)
                        if r.status_code == 503:
                            time.sleep(2)
                            continue
                        break
                    else:
                        r = None  # type: ignore[assignment]
                    if r is None or r.status_code != 200:
                        with gl:
                            lost_ids.append(gid)

        parts = [grant_ids[k::4] for k in range(4)]
        ts = [threading.Thread(target=check, args=(ch,)) for ch in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        by_status = collections.Counter(
            str(r["status"]) for r in _pg_fetch(db_url, "SELECT status FROM grants")
        )
        stats = oidc.stats()
        seen = collections.defaultdict(set, tally.seen)
        for gid, tags in final.seen.items():
            seen[gid] |= tags
        failed_at = {
            str(r["id"]): float(r["failed_at"])
            for r in _pg_fetch(
                db_url, "SELECT id, failed_at FROM grants WHERE failed_at IS NOT NULL"
            )
        }
        att = attribute(
            stats.get("token_log", []), ev.kills, args.window, lost_ids, seen, failed_at
        )
        if args.keep:  # the raw material of the attribution, for a second look
            (tmp / "token_log.json").write_text(json.dumps(stats.get("token_log", [])))
            (tmp / "kills.json").write_text(json.dumps([[t, sorted(p), v] for t, p, v in ev.kills]))
        windows = att["kill_windows"]
        # audit chain: the workers seal; wait until nothing is pending
        audit: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            p = subprocess.run([PY, "-m", "grantkeeper.cli", "audit", "verify", "--json"],
                               env=env(None), capture_output=True, text=True)  # fmt: skip
            with contextlib.suppress(Exception):
                audit = json.loads(p.stdout)
                audit["exit"] = p.returncode
            pending = sum(e.get("pending", 0) for e in audit.get("environments", []))
            if p.returncode != 0 or pending == 0:
                break
            time.sleep(3)
        # webhooks: every event emitted reaches the sink
        emitted = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            emitted = int(_pg_fetch(db_url, "SELECT count(*) AS n FROM webhook_events")[0]["n"])
            if len(sink.ids) >= emitted:
                break
            time.sleep(2)
        result = {
            "duration_s": args.duration,
            "grants": len(grant_ids),
            "connect_failures": connect_failures,
            "api_processes": args.api,
            "workers": args.workers,
            "access_ttl_s": args.access_ttl,
            "postgres": "private cluster (restarted)" if pg.private else "shared (no restarts)",
            "actions": dict(ev.actions),
            "grant_status_at_end": dict(by_status),
            "grants_lost": len(lost_ids),
            "grants_lost_in_kill_windows": att["lost_inside"],
            "grants_lost_outside_kill_windows": att["lost_outside"],
            "kill_windows": windows,
            "refresh_reuse": stats.get("refresh_reuse"),
            "refresh_reuse_in_kill_windows": att["reuse_inside"],
            "refresh_reuse_outside_kill_windows": att["reuse_outside"],
            "outside_kill_windows": att["outside"],
            "refresh_unknown": stats.get("refresh_unknown"),
            "provider_refreshes": stats.get("token", {}).get("refresh_token"),
            "reader_statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "reader_unreachable": tally.unreachable,
            "5xx_other_than_503": sum(tally.codes_5xx.values()) + sum(final.codes_5xx.values()),
            "5xx_codes": dict(tally.codes_5xx + final.codes_5xx),
            "sigterm_exit_s_max": round(max(ev.sigterm_exit_s), 2) if ev.sigterm_exit_s else None,
            "sigterm_hung": ev.sigterm_hung,
            "audit_verify": "ok" if audit.get("exit") == 0 else f"FAILED {audit}",
            "webhooks_emitted": emitted,
            "webhooks_delivered": len(sink.ids),
            "wall_s": round(time.time() - started),
        }
        print(render(result))
        if args.json_out is not None:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        bad = (
            att["lost_outside"]
            or att["reuse_outside"]
            or result["5xx_other_than_503"]
            or result["audit_verify"] != "ok"
            or len(sink.ids) < emitted
        )
        sys.exit(1 if bad else 0)
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        if oidc is not None:
            with contextlib.suppress(Exception):
                oidc.stop()
        pg.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def attribute(
    token_log: list[dict[str, Any]],
    kills: list[tuple[float, set[int], str]],
    window: float,
    lost_ids: list[str],
    seen: dict[str, set[str]],
    failed_at: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Tie each reused refresh token, and each lost grant, to a ``kill -9`` window or not.

    A refresh token presented twice was first consumed by one answer of the provider
    (client port, times). That reuse is excused only when the consuming answer went to a
    connection of a process that was ``kill -9``-ed within ``window`` seconds after it
    (or while it was in flight): the vault had no chance to commit the rotated token.
    A lost grant is excused when its provider grant (found through the access tokens the
    readers were handed for it) had such an excused reuse. A lost grant the readers never
    got a token of is tied by time instead: the provider refused a reused token in the
    3 s before the vault recorded the grant's failure, and every such refusal then was an
    excused reuse (any unexcused one nearby, or none at all, leaves it "outside"). ``kill_windows`` is the old upper bound (every
    refresh answer in a window), kept for comparison.
    """

    def window_of(e: dict[str, Any]) -> str | None:
        for t_kill, ports, victim in kills:
            if e.get("port") not in ports:
                continue
            ms, t0, t1 = t_kill * 1000, e.get("t0", 0), e.get("t1")
            if (
                (t1 is None and t0 <= ms)
                or (t1 is not None and ms - window * 1000 <= t1 <= ms + 50)
                or (t1 is not None and t0 <= ms < t1)
            ):
                return f"{victim}@{time.strftime('%H:%M:%S', time.gmtime(t_kill))}"
        return None

    refreshes = [e for e in token_log if e.get("grant_type") == "refresh_token"]
    windows = sum(1 for e in refreshes if window_of(e) is not None)
    consumer: dict[str, dict[str, Any]] = {}
    for e in sorted(refreshes, key=lambda e: e.get("t0", 0)):
        rt = e.get("rt")
        # the first answer that processed it (a refused status fault does not consume it)
        if rt and not e.get("reuse") and e.get("status") in (200, None) and rt not in consumer:
            consumer[rt] = e
    grant_of_at = {e["at"]: e.get("grant") for e in token_log if e.get("at") and e.get("grant")}
    reuse_inside = reuse_outside = 0
    excused_grants: set[str] = set()
    outside: list[dict[str, Any]] = []
    for e in refreshes:
        if not e.get("reuse"):
            continue
        first = consumer.get(e.get("rt", ""))
        win = window_of(first) if first is not None else None
        if win is not None:
            reuse_inside += 1
            if e.get("grant"):
                excused_grants.add(str(e["grant"]))
            continue
        reuse_outside += 1
        outside.append({
            "what": "reuse", "provider_grant": e.get("grant"), "presented_at_ms": e.get("t0"),
            "first_used": None if first is None else {
                k: first.get(k) for k in ("port", "t0", "t1", "status")},
        })  # fmt: skip
    lost_inside = 0
    refusals: list[tuple[float, bool]] = []  # (answer end, excused) of refused reuses
    for e in refreshes:
        if e.get("reuse") and e.get("t1") is not None:
            first = consumer.get(e.get("rt", ""))
            refusals.append((float(e["t1"]), first is not None and window_of(first) is not None))
    for gid in lost_ids:
        pgrants = {grant_of_at[t] for t in seen.get(gid, ()) if t in grant_of_at}
        at = (failed_at or {}).get(gid)
        near = [
            ok
            for t1, ok in refusals
            if at is not None and at * 1000 - 3000 <= t1 <= at * 1000 + 100
        ]
        if pgrants & excused_grants or (not pgrants and near and all(near)):
            lost_inside += 1
        else:
            outside.append({"what": "lost", "grant_id": gid, "provider_grants": sorted(pgrants)})
    return {
        "kill_windows": windows,
        "reuse_inside": reuse_inside,
        "reuse_outside": reuse_outside,
        "lost_inside": lost_inside,
        "lost_outside": len(lost_ids) - lost_inside,
        "outside": outside,
    }


def render(r: dict[str, Any]) -> str:
    rows = [
        ("grants (connected through the provider)", f"{r['grants']} ({r['connect_failures']} connects failed)"),
        ("processes", f"{r['api_processes']} API + {r['workers']} workers, PostgreSQL {r['postgres']}"),
        ("chaos", f"{r['duration_s']:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(r["actions"].items()))),
        ("grants lost: inside / outside counted kill windows", f"{r['grants_lost']}: {r['grants_lost_in_kill_windows']} / {r['grants_lost_outside_kill_windows']}"),
        ("kill -9 windows (provider answered, then the process died)", str(r["kill_windows"])),
        ("refresh tokens presented twice (provider count): inside / outside kill windows", f"{r['refresh_reuse']}: {r['refresh_reuse_in_kill_windows']} / {r['refresh_reuse_outside_kill_windows']}"),
        ("refresh tokens unknown to the provider when presented", str(r["refresh_unknown"])),
        ("refreshes at the provider", str(r["provider_refreshes"])),
        ("5xx other than 503", f"{r['5xx_other_than_503']} {r['5xx_codes'] or ''}".strip()),
        ("token reads (status: count)", ", ".join(f"{k}: {v}" for k, v in r["reader_statuses"].items())
         + f"; unreachable (process down): {r['reader_unreachable']}"),
        ("grant status at the end", ", ".join(f"{k}: {v}" for k, v in r["grant_status_at_end"].items())),
        ("SIGTERM: slowest exit / hung", f"{r['sigterm_exit_s_max']} s / {r['sigterm_hung']}"),
        ("`audit verify`", r["audit_verify"]),
        ("webhook events delivered / emitted", f"{r['webhooks_delivered']} / {r['webhooks_emitted']}"),
    ]  # fmt: skip
    out = ["| measure | result |", "| --- | --- |"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(out)


if __name__ == "__main__":
    main()
