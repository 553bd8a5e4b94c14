"""The tamper-evident audit log (issue 8.3; SECURITY.md P7 and Vault's "audit before the secret").

The server writes events; the sealer links them; ``grantkeeper audit verify`` must name the
first broken link after an event is edited, deleted or reordered, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.support.gk import Server, master_key, running_server

from grantkeeper.auditchain import GENESIS, Sealer, seal, verify
from grantkeeper.config import Settings
from grantkeeper.store.db import create_engine
from grantkeeper.store.tables import audit_events
from grantkeeper.vault import Keyring, Vault

T = TypeVar("T")


def _run(fn: Callable[[AsyncEngine], Awaitable[T]], url: str) -> T:
    """With grantkeeper's own engine (SQLite: BEGIN IMMEDIATE transactions, as in production)."""

    async def go() -> T:
        engine = create_engine(Settings(database_url=url, master_keys=SecretStr(master_key())))
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _vault(server: Server) -> Vault:
    return Vault(Keyring.parse(server.env["GRANTKEEPER_MASTER_KEYS"]))


def _make_events(server: Server, n: int = 6) -> None:
    with server.client() as c:
        for i in range(n):
            r = c.put(
                f"/v1/integrations/int-{i}",
                json={
                    "provider": "oauth2",
                    "client_id": f"cid-{i}",
                    "client_secret": f"secret-{i}",
                    "scopes": ["read"],
                    "return_urls": ["https://app.example/done"],
                    "endpoints": {
                        "authorization_url": "https://idp.example/authorize",
                        "token_url": "https://idp.example/token",
                    },
                },
            )
            assert r.status_code in (200, 201), r.text


def _seal_all(server: Server) -> int:
    vault = _vault(server)
    return _run(lambda e: seal(e, vault, time.time(), horizon=0), server.db.url)


def _rows(server: Server) -> list[dict[str, Any]]:
    async def go(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            res = await conn.execute(select(audit_events).order_by(audit_events.c.id))
            return [dict(m) for m in res.mappings().all()]

    return _run(go, server.db.url)


def _exec(server: Server, *statements: Any) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            for st in statements:
                await conn.execute(st)

    _run(go, server.db.url)


def _verify_cli(server: Server) -> tuple[int, dict[str, Any]]:
    p = server.cli("audit", "verify", "--json", check=False)
    return p.returncode, json.loads(p.stdout)


@pytest.fixture
def quiet(backend: str, tmp_path: Path) -> Any:
    """A server without worker: sealing happens only when the test says so."""
    with running_server(backend, tmp_path, worker=False) as server:
        yield server


def test_sealed_chain_verifies_and_links_in_id_order(quiet: Server) -> None:
    _make_events(quiet)
    assert _seal_all(quiet) >= 6
    rows = _rows(quiet)
    assert all(r["hash"] and len(r["hash"]) == 64 for r in rows)
    assert rows[0]["prev_hash"] == GENESIS
    for a, b in zip(rows, rows[1:], strict=False):
        assert b["prev_hash"] == a["hash"]
    code, out = _verify_cli(quiet)
    assert code == 0, out
    env = out["environments"][0]
    assert env["ok"] and env["sealed"] == len(rows) and env["head"]["id"] == rows[-1]["id"]
    # sealing again changes nothing (idempotent) and new events extend the chain
    assert _seal_all(quiet) == 0
    _make_events(quiet, 2)
    assert _seal_all(quiet) >= 2
    assert _verify_cli(quiet)[0] == 0


def test_edited_event_is_named(quiet: Server) -> None:
    _make_events(quiet)
    _seal_all(quiet)
    victim = _rows(quiet)[3]
    _exec(
        quiet,
        update(audit_events)
        .where(audit_events.c.id == victim["id"])
        .values(actor="key:someone-else"),
    )
    code, out = _verify_cli(quiet)
    assert code == 1
    broken = out["environments"][0]["broken"]
    assert broken["event_id"] == victim["id"] and broken["kind"] == "edited"


def test_edited_detail_or_time_is_named(quiet: Server) -> None:
    _make_events(quiet)
    _seal_all(quiet)
    rows = _rows(quiet)
    _exec(
        quiet,
        update(audit_events).where(audit_events.c.id == rows[2]["id"]).values(at=rows[2]["at"] + 1),
    )
    code, out = _verify_cli(quiet)
    assert code == 1 and out["environments"][0]["broken"]["event_id"] == rows[2]["id"]


def test_deleted_event_is_named(quiet: Server) -> None:
    _make_events(quiet)
    _seal_all(quiet)
    rows = _rows(quiet)
    _exec(quiet, audit_events.delete().where(audit_events.c.id == rows[2]["id"]))
    code, out = _verify_cli(quiet)
    assert code == 1
    broken = out["environments"][0]["broken"]
    assert broken["kind"] == "deleted" and broken["event_id"] == rows[3]["id"]
    assert str(rows[1]["id"]) in broken["message"]


def test_reordered_events_are_named(quiet: Server) -> None:
    _make_events(quiet)
    _seal_all(quiet)
    rows = _rows(quiet)
    a, b = rows[2]["id"], rows[3]["id"]
    sa, sb = rows[2]["chain_seq"], rows[3]["chain_seq"]
    tmp = 10_000_000
    # swap the two events' places: ids and chain positions (the chain is walked in
    # chain_seq order; the hash covers the id)
    _exec(
        quiet,
        update(audit_events).where(audit_events.c.id == a).values(id=tmp, chain_seq=tmp),
        update(audit_events).where(audit_events.c.id == b).values(id=a, chain_seq=sa),
        update(audit_events).where(audit_events.c.id == tmp).values(id=b, chain_seq=sb),
    )
    code, out = _verify_cli(quiet)
    assert code == 1
    broken = out["environments"][0]["broken"]
    assert broken["event_id"] == a and broken["kind"] == "reordered"
    # swapping the ids alone is caught too (each hash covers its event's id)
    _exec(
        quiet,
        update(audit_events).where(audit_events.c.id == a).values(id=tmp, chain_seq=tmp),
        update(audit_events).where(audit_events.c.id == b).values(id=a, chain_seq=sa),
        update(audit_events).where(audit_events.c.id == tmp).values(id=b, chain_seq=sb),
        update(audit_events).where(audit_events.c.id == a).values(id=tmp),
        update(audit_events).where(audit_events.c.id == b).values(id=a),
        update(audit_events).where(audit_events.c.id == tmp).values(id=b),
    )
    assert _verify_cli(quiet)[0] == 1


def test_removed_seal_is_named(quiet: Server) -> None:
    _make_events(quiet)
    _seal_all(quiet)
    rows = _rows(quiet)
    _exec(
        quiet,
        update(audit_events)
        .where(audit_events.c.id == rows[1]["id"])
        .values(hash=None, prev_hash=None),
    )
    code, out = _verify_cli(quiet)
    assert code == 1
    broken = out["environments"][0]["broken"]
    assert broken["event_id"] == rows[1]["id"] and broken["kind"] == "unsealed"


def test_forged_seal_without_the_key_is_detected(quiet: Server) -> None:
    """Someone with database access but no master key recomputes a hash with another key."""
    import hashlib
    import hmac

    from grantkeeper.auditchain import canonical

    _make_events(quiet)
    _seal_all(quiet)
    rows = _rows(quiet)
    victim = dict(rows[-1], actor="key:forged")
    forged = hmac.new(b"k" * 32, victim["prev_hash"].encode() + canonical(victim), hashlib.sha256)
    _exec(
        quiet,
        update(audit_events)
        .where(audit_events.c.id == victim["id"])
        .values(actor="key:forged", hash=forged.hexdigest()),
    )
    code, out = _verify_cli(quiet)
    assert code == 1 and out["environments"][0]["broken"]["event_id"] == victim["id"]


def test_chain_survives_master_key_rotation(quiet: Server, tmp_path: Path) -> None:
    """Links sealed under an old primary key still verify while that key is loaded."""
    _make_events(quiet, 3)
    _seal_all(quiet)
    old = quiet.env["GRANTKEEPER_MASTER_KEYS"]
    quiet.env["GRANTKEEPER_MASTER_KEYS"] = f"{master_key('t2')},{old}"
    _make_events(quiet, 2)
    assert _seal_all(quiet) >= 2  # sealed under t2
    code, out = _verify_cli(quiet)
    assert code == 0, out


def test_events_younger_than_the_horizon_wait(quiet: Server) -> None:
    _make_events(quiet, 2)
    vault = _vault(quiet)
    assert _run(lambda e: seal(e, vault, time.time(), horizon=3600), quiet.db.url) == 0
    code, out = _verify_cli(quiet)
    assert code == 0 and out["environments"][0]["pending"] >= 2


def test_concurrent_sealers_build_one_chain(quiet: Server) -> None:
    _make_events(quiet, 8)
    vault = _vault(quiet)
    env_id = _rows(quiet)[0]["environment_id"]

    async def go(engine: AsyncEngine) -> None:
        sealers = [Sealer(vault, horizon=0, batch=3) for _ in range(4)]

        async def drive(s: Sealer) -> None:
            for _ in range(20):
                await s.step(engine, time.time())

        await asyncio.gather(*(drive(s) for s in sealers))
        report = await verify(engine, vault, env_id)
        assert report.ok and report.pending == 0, report

    _run(go, quiet.db.url)


def test_worker_seals_by_itself(gk: Server) -> None:
    """The worker's sealer links events once they are older than the horizon (5 s)."""
    _make_events(gk, 3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = _rows(gk)
        if rows and all(r["hash"] for r in rows):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the worker did not seal the audit events")
    code, out = _verify_cli(gk)
    assert code == 0 and out["ok"]


def test_audit_verify_per_environment_and_text_output(quiet: Server) -> None:
    _make_events(quiet, 2)
    _seal_all(quiet)
    p = quiet.cli("audit", "verify", "--environment", "default")
    assert p.returncode == 0 and "default: ok" in p.stdout
    p = quiet.cli("audit", "verify", "--environment", "nope", check=False)
    assert p.returncode != 0
    _exec(quiet, text("DELETE FROM audit_events WHERE id = (SELECT MIN(id) FROM audit_events)"))
    p = quiet.cli("audit", "verify", check=False)
    assert p.returncode == 1 and "BROKEN at event" in p.stdout


def _db_vault(server: Server) -> Vault:
    """The vault as a process with the server's current GRANTKEEPER_MASTER_KEYS unseals it."""
    from grantkeeper.runtime import unseal

    async def go(engine: AsyncEngine) -> Vault:
        settings = Settings(database_url=server.db.url, master_keys=SecretStr(server.env["GRANTKEEPER_MASTER_KEYS"]))
        return (await unseal(settings, engine)).vault

    return _run(go, server.db.url)


def test_chain_and_ui_sessions_survive_retiring_the_old_key(quiet: Server) -> None:
    """Issue 12, review item 6: the chain key and the UI session key have a key of their own
    in the keyring; `keys rotate` then removing the old key from the configuration keeps
    `audit verify` at 0 and signed UI sessions valid (they were derived from the old key)."""
    from grantkeeper.web.ui_session import UiKeys

    _make_events(quiet, 3)
    _seal_all(quiet)
    before = UiKeys(_db_vault(quiet))
    token = before.new_session("key-1", "env-1", time.time())
    cookie = before.sign(token)
    old = quiet.env["GRANTKEEPER_MASTER_KEYS"]
    quiet.env["GRANTKEEPER_MASTER_KEYS"] = f"{master_key('t2')},{old}"
    rotated = quiet.cli("keys", "rotate", "--json")
    assert json.loads(rotated.stdout)["remaining_by_key"] == {}
    quiet.env["GRANTKEEPER_MASTER_KEYS"] = quiet.env["GRANTKEEPER_MASTER_KEYS"].split(",")[0]  # t1 retired
    code, out = _verify_cli(quiet)
    assert code == 0, out
    after = UiKeys(_db_vault(quiet))
    assert after.verify(cookie, time.time()) is not None


# ---------------------------------------------------------------- late commits (issue 12, review item 5)


def _insert_event_sql(server: Server, event_id: int | None, at: float) -> None:
    from tests.support.sqlexec import sql_exec

    env_id = _rows(server)[0]["environment_id"]
    cols = "environment_id, at, actor, action, detail" + (", id" if event_id is not None else "")
    vals = "?, ?, 'key:late', 'late.event', '{}'" + (", ?" if event_id is not None else "")
    args: list[Any] = [env_id, at] + ([event_id] if event_id is not None else [])
    sql_exec(server.db, f"INSERT INTO audit_events ({cols}) VALUES ({vals})", *args)


def _reserve_id(server: Server) -> int:
    """An audit id nobody uses yet but lower than every later one (as nextval in a slow txn)."""
    from tests.support.sqlexec import sql_rows

    if server.db.backend == "postgres":
        (row,) = sql_rows(server.db, "SELECT nextval(pg_get_serial_sequence('audit_events', 'id'))")
        return int(row[0])
    # SQLite hands out max(rowid) + 1: a placeholder row further up leaves a gap below it
    top = max(r["id"] for r in _rows(server))
    _insert_event_sql(server, top + 10, time.time())
    return top + 1


def test_an_event_committed_after_a_later_one_was_sealed_is_not_tampering(quiet: Server) -> None:
    """Ids are assigned at insert, not at commit: a lower id may become visible after a
    higher one was sealed. That is not tampering: the event is sealed later, verify is ok."""
    _make_events(quiet, 2)
    # an id taken by a transaction that commits late: reserve it now, make it visible later
    late_id = _reserve_id(quiet)
    _make_events(quiet, 3)
    assert all(r["id"] > late_id for r in _rows(quiet)[-3:])
    _seal_all(quiet)
    assert _verify_cli(quiet)[0] == 0
    # the slow transaction commits now, with its (old) application timestamp
    _insert_event_sql(quiet, late_id, time.time() - 60)
    _seal_all(quiet)
    code, out = _verify_cli(quiet)
    assert code == 0, out
    env = out["environments"][0]
    assert env["pending"] == 0 and env["sealed"] == len(_rows(quiet))
    # and the chain still detects an edit of the late event
    _exec(quiet, update(audit_events).where(audit_events.c.id == late_id).values(actor="key:x"))
    code, out = _verify_cli(quiet)
    assert code == 1 and out["environments"][0]["broken"]["event_id"] == late_id


def test_a_transaction_held_open_on_postgres_never_breaks_the_chain(tmp_path: Path) -> None:
    """The real thing: a transaction holds an audit id while others commit and the sealer runs."""
    import asyncpg

    with running_server("postgres", tmp_path, worker=False) as server:
        _make_events(server, 2)
        env_id = _rows(server)[0]["environment_id"]
        dsn = server.db.url.replace("postgresql+asyncpg://", "postgresql://")
        vault = _vault(server)

        async def go() -> None:
            slow = await asyncpg.connect(dsn)
            tx = slow.transaction()
            await tx.start()
            held = await slow.fetchval(
                "INSERT INTO audit_events (environment_id, at, actor, action, detail) "
                "VALUES ($1, $2, 'key:slow', 'slow.event', '{}') RETURNING id",
                env_id,
                time.time() - 60,
            )
            await asyncio.to_thread(_make_events, server, 3)
            engine = create_engine(Settings(database_url=server.db.url, master_keys=SecretStr(master_key())))
            try:
                await seal(engine, vault, time.time(), horizon=0)
                await tx.commit()
                await slow.close()
                await seal(engine, vault, time.time(), horizon=0)
                report = await verify(engine, vault, env_id)
                assert report.ok, report
                assert report.pending == 0 and report.sealed == report.events
                assert held is not None
            finally:
                await engine.dispose()

        asyncio.run(go())
        assert _verify_cli(server)[0] == 0


# ---------------------------------------------------------------- retention (issue 18, item 3)


def test_verify_after_pruning_reports_it_and_names_a_tampered_checkpoint(quiet: Server) -> None:
    from grantkeeper.auditchain import prune
    from grantkeeper.store.tables import audit_checkpoints

    _make_events(quiet, 5)
    _seal_all(quiet)
    rows = _rows(quiet)
    env_id = rows[0]["environment_id"]
    vault = _vault(quiet)
    cutoff = rows[3]["at"]
    n = _run(lambda e: prune(e, vault, env_id, cutoff=cutoff, now=time.time()), quiet.db.url)
    left = _rows(quiet)
    assert n == len(rows) - len(left) >= 3
    code, out = _verify_cli(quiet)
    assert code == 0, out
    env = out["environments"][0]
    assert env["pruned"] == n and env["checkpoint"]["event_id"] == rows[n - 1]["id"]
    assert env["sealed"] == len(left)
    p = quiet.cli("audit", "verify")
    assert p.returncode == 0 and f"{n} pruned" in p.stdout
    _exec(quiet, update(audit_checkpoints).values(pruned=0))
    code, out = _verify_cli(quiet)
    assert code == 1 and out["environments"][0]["broken"]["kind"] == "checkpoint"
    p = quiet.cli("audit", "verify", check=False)
    assert p.returncode == 1 and "BROKEN" in p.stdout


def test_worker_prunes_by_itself(backend: str, tmp_path: Path) -> None:
    """With a tiny retention the worker seals, then prunes, and the chain still verifies."""
    with running_server(
        backend,
        tmp_path,
        GRANTKEEPER_AUDIT_RETENTION_DAYS="0.00001",  # under a second
        GRANTKEEPER_PURGE_INTERVAL="0.3",
    ) as server:
        _make_events(server, 3)
        if backend == "postgres":
            # whole months only (nothing of this month goes); the worker keeps the current
            # month and the two after it created (the migration made this one and the next)
            from tests.support.sqlexec import sql_rows

            from grantkeeper.store.auditparts import month_of

            m = month_of(time.time())
            want = {m.name, m.next().name, m.next().next().name}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                names = {r[0] for r in sql_rows(server.db, "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")}
                if want <= names:
                    break
                time.sleep(0.5)
            else:
                pytest.fail(f"the worker did not create the audit partitions ahead: {names}")
            assert _verify_cli(server)[0] == 0
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code, out = _verify_cli(server)
            if out["environments"][0]["pruned"] >= 3:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the worker did not prune the audit events: {out}")
        assert code == 0 and out["ok"], out
