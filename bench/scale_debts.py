"""Issue 18.3 scale debts, before and after: rate limits and the audit sealer.

``.venv/bin/python -m bench.scale_debts [--base COMMIT] [--seconds 10] [--rounds 2]``

Both run the code of ``--base`` (exported with ``git archive``, put first on
``PYTHONPATH``) and of the working tree, on fresh ``gk_bench_*`` PostgreSQL databases:

* **rate limits**: ``grantkeeper serve --no-worker`` with 10,000 grants; ``wrk -t1 -c64``
  token reads with limits off, on but not binding (1,000,000/s), and binding (200/s,
  burst 100: most answers are 429). Rows written to ``rate_limits`` per request come from
  ``pg_stat_user_tables`` (read after the server stopped, so every backend has flushed).
* **audit sealer**: a thread inserts 1,000 ``token.issued`` events a second (10 every
  10 ms, as group commit does) while the worker's sealer loop runs (``step``; at once
  again when busy, else after ``worker_interval`` = 1 s). Per pass: wall time, events,
  the sealer thread's CPU; the share of the run the sealer was busy; the lag behind the
  horizon.

Prints one JSON document and a Markdown table; ``docs/benchmarks.md`` quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.__main__ import (
    PG,
    ROOT,
    Db,
    bench_db,
    bootstrap,
    log,
    master_key,
    put_integration,
    seed,
    start_gk,
    write_ids,
    wrk,
)

GRANTS = 10_000


def export(commit: str, tmp: Path) -> Path:
    """The ``src`` tree of ``commit``, for PYTHONPATH."""
    out = tmp / f"src-{commit[:10]}"
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def _written(db: Db) -> int:
    conn = await asyncpg.connect(db.dsn)
    try:
        got = await conn.fetchval(
            "SELECT coalesce(sum(n_tup_upd + n_tup_ins), 0) FROM pg_stat_user_tables"
            " WHERE relname = 'rate_limits'"
        )
        return int(got)
    finally:
        await conn.close()


# ------------------------------------------------------------------ rate limits

LIMITS = {
    "off": {"GRANTKEEPER_RATE_LIMIT_PER_SECOND": "0"},
    "on (1,000,000/s)": {
        "GRANTKEEPER_RATE_LIMIT_PER_SECOND": "1000000",
        "GRANTKEEPER_RATE_LIMIT_BURST": "1000000",
    },
    # below what the server does on this machine, so most answers are 429
    "binding (200/s)": {
        "GRANTKEEPER_RATE_LIMIT_PER_SECOND": "200",
        "GRANTKEEPER_RATE_LIMIT_BURST": "100",
    },
}


def bench_rate_limits(
    srcs: dict[str, Path], tmp: Path, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    keys = master_key("b1")
    rows: list[dict[str, Any]] = []
    with bench_db("rl") as db:
        env_id, admin = bootstrap(db, keys)
        ids = write_ids(
            seed(db, keys, env_id, GRANTS, expires_at=time.time() + 86_400 * 30, due_at=None),
            tmp,
            "rl-ids.txt",
        )
        first = True
        for rnd in range(rounds):
            for code, src in srcs.items():
                for limit, extra in LIMITS.items():
                    pythonpath = f"{src}{os.pathsep}{ROOT}"
                    gk, base = start_gk(
                        db, keys, tmp, PYTHONPATH=pythonpath, GRANTKEEPER_LOG_LEVEL="INFO", **extra
                    )
                    try:
                        if first:
                            put_integration(base, admin, "http://127.0.0.1:9")
                            first = False
                        # counted from before the warm-up: a busy backend reports its row
                        # counts late, the stop below flushes them all
                        before_rows = asyncio.run(_written(db))
                        warm = wrk(base, ids, admin, conns=64, seconds=2, threads=1)
                        cpu0 = gk.cpu_s()
                        r = wrk(base, ids, admin, conns=64, seconds=seconds, threads=1)
                        cpu = gk.cpu_s() - cpu0
                        load = loadavg()
                    finally:
                        gk.stop()
                    # after the stop: every backend has reported its counters
                    written = asyncio.run(_written(db)) - before_rows
                    sent = warm.requests + r.requests
                    row = {
                        "round": rnd + 1,
                        "code": code,
                        "limit": limit,
                        "rps": round(r.rps),
                        "p99_ms": r.p99_ms,
                        "requests": r.requests,
                        "non_2xx": r.errors,
                        "rows_written": written,
                        "writes_per_request": round(written / max(sent, 1), 4),
                        "writes_per_200": round(written / max(sent - warm.errors - r.errors, 1), 4),
                        "server_cpu_us_per_req": round(cpu / max(r.requests, 1) * 1e6),
                        "load": load,
                    }
                    log(json.dumps(row))
                    rows.append(row)
    return rows


# ------------------------------------------------------------------ the sealer


def _pg_cpu() -> float:
    """CPU seconds of every postgres process (the server and its backends) so far."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        if "(postgres)" in stat:
            f = stat.rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
    return total / tick


def sealer_child(dsn: str, url: str, keys: str, seconds: float, rate: int) -> dict[str, Any]:
    """Run in a subprocess with the code under test first on PYTHONPATH."""
    from pydantic import SecretStr

    from grantkeeper.auditchain import SEAL_HORIZON, Sealer
    from grantkeeper.config import Settings
    from grantkeeper.store.db import create_engine
    from grantkeeper.vault import Keyring, Vault

    stop = threading.Event()
    written = [0]

    def writer() -> None:
        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("SET synchronous_commit = off")  # as the hot path's
                per, tick = rate // 100, 0.01
                nxt = time.monotonic()
                while not stop.is_set():
                    now = time.time()
                    await conn.executemany(
                        "INSERT INTO audit_events (environment_id, at, actor, action, grant_id,"
                        " integration_id, detail) VALUES ('env-bench', $1, 'key:bench',"
                        " 'token.issued', $2, 'bench', '{\"generation\": 1}')",
                        [(now, f"g-{written[0] + i}") for i in range(per)],
                    )
                    written[0] += per
                    nxt += tick
                    await asyncio.sleep(max(nxt - time.monotonic(), 0))
            finally:
                await conn.close()

        asyncio.run(go())

    settings = Settings(database_url=url, master_keys=SecretStr(keys))
    vault = Vault(Keyring.parse(keys))
    passes: list[tuple[float, float, int]] = []
    lags: list[float] = []

    async def seal_loop() -> None:
        engine = create_engine(settings)
        probe = await asyncpg.connect(dsn)
        sealer = Sealer(vault)
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                w0, c0 = time.perf_counter(), time.thread_time()
                n = await sealer.step(engine, time.time())
                passes.append((time.perf_counter() - w0, time.thread_time() - c0, n))
                oldest = await probe.fetchval("SELECT min(at) FROM audit_events WHERE hash IS NULL")
                if oldest is not None:
                    lags.append(max(time.time() - SEAL_HORIZON - float(oldest), 0.0))
                # the worker loop: at once again when busy, else after worker_interval
                busy = n if getattr(sealer, "more", True) else 0
                if not busy:
                    await asyncio.sleep(settings.worker_interval)
        finally:
            await probe.close()
            await engine.dispose()

    t = threading.Thread(target=writer, daemon=True)
    pg0 = _pg_cpu()
    t.start()
    asyncio.run(seal_loop())
    stop.set()
    t.join()
    pg = _pg_cpu() - pg0
    work = [p for p in passes if p[2] > 0]
    sealed = sum(p[2] for p in passes)
    return {
        "seconds": seconds,
        "events_written": written[0],
        "events_sealed": sealed,
        "passes": len(passes),
        "passes_with_work": len(work),
        "events_per_pass": round(sealed / max(len(work), 1)),
        "ms_per_pass_median": round(statistics.median(p[0] for p in work) * 1000, 1) if work else 0,
        "ms_per_pass_max": round(max(p[0] for p in work) * 1000, 1) if work else 0,
        "sealer_cpu_us_per_event": round(sum(p[1] for p in passes) / max(sealed, 1) * 1e6, 1),
        "sealer_busy_share": round(sum(p[0] for p in passes) / seconds, 3),
        # every postgres process of the machine (other sessions' too): indicative only
        "postgres_cpu_s": round(pg, 2),
        "lag_s_max": round(max(lags), 2) if lags else 0.0,
        "load": loadavg(),
    }


def bench_sealer(srcs: dict[str, Path], tmp: Path, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for code, src in srcs.items():
        keys = master_key("b1")
        with bench_db("seal") as db:
            bootstrap(db, keys)
            env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{ROOT}")
            out = subprocess.run(
                [
                    sys.executable, "-m", "bench.scale_debts", "sealer-child",
                    "--dsn", db.dsn, "--url", db.url, "--keys", keys, "--seconds", str(seconds),
                ],
                env=env, capture_output=True, text=True, check=True, cwd=ROOT,
            ).stdout  # fmt: skip
            row = {"code": code, **json.loads(out)}
            log(json.dumps(row))
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "what", nargs="?", default="all", choices=["all", "rate", "sealer", "sealer-child"]
    )
    ap.add_argument("--base", default="0e377e4")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sealer-seconds", type=float, default=25.0)
    ap.add_argument("--dsn")
    ap.add_argument("--url")
    ap.add_argument("--keys")
    args = ap.parse_args()
    if args.what == "sealer-child":
        print(json.dumps(sealer_child(args.dsn, args.url, args.keys, args.seconds, 1000)))
        return
    results: dict[str, Any] = {"pg": PG, "load_start": loadavg()}
    with tempfile.TemporaryDirectory(prefix="gk-bench-debts-") as d:
        tmp = Path(d)
        srcs = {f"before ({args.base})": export(args.base, tmp), "after": ROOT / "src"}
        if args.what in ("all", "rate"):
            results["rate_limits"] = bench_rate_limits(srcs, tmp, args.seconds, args.rounds)
        if args.what in ("all", "sealer"):
            results["sealer"] = bench_sealer(srcs, tmp, args.sealer_seconds)
    print(json.dumps(results, indent=2))
    if "rate_limits" in results:
        print(
            table(
                results["rate_limits"],
                [
                    "round",
                    "code",
                    "limit",
                    "rps",
                    "p99_ms",
                    "non_2xx",
                    "writes_per_request",
                    "writes_per_200",
                    "server_cpu_us_per_req",
                    "load",
                ],
            )  # fmt: skip
        )
    if "sealer" in results:
        print(
            table(
                results["sealer"],
                [
                    "code",
                    "events_written",
                    "events_sealed",
                    "passes_with_work",
                    "events_per_pass",
                    "ms_per_pass_median",
                    "ms_per_pass_max",
                    "sealer_cpu_us_per_event",
                    "postgres_cpu_s",
                    "lag_s_max",
                    "load",
                ],
            )  # fmt: skip
        )


if __name__ == "__main__":
    main()
