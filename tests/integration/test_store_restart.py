"""A PostgreSQL restart cutting a query in flight (issue 12, found by the chaos harness).

``pg_ctl restart -m fast`` (or ``pg_terminate_backend``) ends every backend with
57P01 "terminating connection due to administrator command". asyncpg's error for a
query that was running then reaches SQLAlchemy as a bare ``DBAPIError`` (connection
invalidated), not an ``OperationalError``; the API answered it 500 ``internal_error``.
It is the database being unavailable for a moment: 503 ``store_unavailable``.

PostgreSQL only: SQLite has no server whose restart could cut a query (its "database
is locked" is covered by the store-failure tests on both backends).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import PG_ADMIN_DSN, running_server
from tests.support.oidc import OidcServer

pytestmark = pytest.mark.oidc


async def _terminate_while_waiting(dsn: str, dbname: str, request: threading.Thread) -> None:
    """Hold a lock on ``grants`` until the request waits for it, then end every backend
    of the database but ours (what a fast restart does to a running query)."""
    holder = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)
    try:
        tr = holder.transaction()
        await tr.start()
        await holder.execute("LOCK TABLE grants IN ACCESS EXCLUSIVE MODE")
        request.start()
        ours = [await holder.fetchval("SELECT pg_backend_pid()"), await watcher.fetchval("SELECT pg_backend_pid()")]
        deadline = time.monotonic() + 30
        while not await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", dbname
        ):
            assert time.monotonic() < deadline, "the request never reached the grants table"
            await asyncio.sleep(0.05)
        await watcher.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> ALL($2::int[])",
            dbname,
            ours,
        )
        await tr.rollback()
    finally:
        await holder.close()
        await watcher.close()


@pytest.mark.parametrize("call", ["token", "get"])
def test_query_cut_by_a_database_restart_answers_503(tmp_path: Path, oidc: OidcServer, call: str) -> None:
    with running_server("postgres", tmp_path, worker=False) as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", f"u-restart-{call}")
        dbname = gk.db.url.rsplit("/", 1)[1]
        dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname
        out: list[httpx.Response] = []

        def request() -> None:
            with gk.client(timeout=60) as c:
                if call == "token":
                    out.append(c.post(f"/v1/grants/{gid}/token", json={}))
                else:
                    out.append(c.get(f"/v1/grants/{gid}"))

        t = threading.Thread(target=request, daemon=True)
        asyncio.run(_terminate_while_waiting(dsn, dbname, t))
        t.join(60)
        assert out, "no answer"
        r = out[0]
        # the token read's own connections reconnect and may answer at once; never a 500
        assert r.status_code in (200, 503), (r.status_code, r.text)
        if r.status_code == 503:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "store_unavailable"
            assert r.headers["Retry-After"].isdigit()
        # it recovers on fresh connections (a pooled connection the restart also ended may
        # still answer one more 503, never a 500)
        statuses = []
        with gk.client() as c:
            for _ in range(10):
                statuses.append(c.get(f"/v1/grants/{gid}").status_code)
                if statuses[-1] == 200:
                    break
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
