"""P4/P5: online key rotation keeps everything readable; wrong, missing or malformed keys
refuse to start or make ``/readyz`` fail, never a stack trace."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.gk import (
    Database,
    Server,
    engine_for,
    free_port,
    master_key,
    new_database,
    server_env,
    start_server,
)

from grantkeeper.config import Settings
from grantkeeper.errors import ConfigError
from grantkeeper.rotation import count_pending, probe, rotate
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import create_engine
from grantkeeper.store.tables import environments
from grantkeeper.vault import Keyring, Vault, aad_for

RETURN = "https://app.example.com/done"
# table -> (secret columns, has version)
SECRET_COLUMNS = {
    "integrations": (("client_secret",), False),
    "grants": (("access_token", "refresh_token", "id_token"), True),
    "webhook_endpoints": (("secret",), False),
    "connect_sessions": (("verifier", "export"), False),
}


# ------------------------------------------------------------------ helpers


def stored_rows(db: Database) -> list[dict[str, Any]]:
    """Every row holding a ciphertext: table, environment, id, version, field, blob."""
    out: list[dict[str, Any]] = []

    def collect(table: str, rows: list[Any]) -> None:
        fields, has_version = SECRET_COLUMNS[table]
        for r in rows:
            for f in fields:
                blob = r[f"{f}_ct"]
                if blob is not None:
                    out.append(
                        {
                            "table": table,
                            "environment_id": r["environment_id"],
                            "id": r["id"],
                            "version": r["version"] if has_version else 0,
                            "field": f,
                            "blob": bytes(blob),
                        }
                    )

    if db.backend == "sqlite":
        conn = sqlite3.connect(db.url.partition(":///")[2])
        conn.row_factory = sqlite3.Row
        try:
            for table in SECRET_COLUMNS:
                collect(table, conn.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608
        finally:
            conn.close()
        return out

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(db.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            for table in SECRET_COLUMNS:
                collect(table, await conn.fetch(f"SELECT * FROM {table}"))  # noqa: S608
        finally:
            await conn.close()

    # in a thread of its own: callers may already run an event loop
    t = threading.Thread(target=asyncio.run, args=(go(),))
    t.start()
    t.join()
    return out


def key_ids(db: Database) -> Counter[str]:
    return Counter(r["blob"][2 : 2 + r["blob"][1]].decode() for r in stored_rows(db))


def db_vault(db: Database, keys: str) -> Vault:
    """The vault as a process started with ``GRANTKEEPER_MASTER_KEYS=keys`` has it (the
    keyring unwrapped from the database); raises like such a start would."""
    from grantkeeper.runtime import unseal

    out: list[Any] = []

    async def go() -> None:
        settings = Settings(database_url=db.url, master_keys=keys, keyring_check_interval=1)  # type: ignore[arg-type]
        engine = create_engine(settings)
        try:
            out.append((await unseal(settings, engine)).vault)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out.append(exc)
        finally:
            await engine.dispose()

    t = threading.Thread(target=asyncio.run, args=(go(),))
    t.start()
    t.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]  # type: ignore[no-any-return]


def open_all(db: Database, keys: str) -> dict[tuple[str, str, str], bytes]:
    """Open every stored ciphertext with ``keys`` from outside the server."""
    vault = db_vault(db, keys)
    return {
        (r["table"], r["id"], r["field"]): vault.open(
            r["blob"], aad_for(r["environment_id"], r["table"], r["id"], r["field"], r["version"])
        )
        for r in stored_rows(db)
    }


def populate(s: Server) -> dict[str, Any]:
    """An integration, imported grants with live access tokens, a webhook endpoint."""
    iid = "rot-" + secrets.token_hex(3)
    client_secret = "cs_" + secrets.token_urlsafe(24)
    expires = (datetime.now(UTC) + timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    grants: dict[str, str] = {}
    refresh: list[str] = []
    with s.client() as c:
        r = c.put(
            f"/v1/integrations/{iid}",
            json={
                "provider": "oauth2",
                "client_id": "client-rot",
                "client_secret": client_secret,
                "scopes": ["read"],
                "return_urls": [RETURN],
                "endpoints": {"authorization_url": "http://127.0.0.1:9/a", "token_url": "http://127.0.0.1:9/t"},
            },
        )
        assert r.status_code == 201, r.text
        for i in range(4):
            at, rt = "at_" + secrets.token_urlsafe(20), "rt_" + secrets.token_urlsafe(20)
            g = c.post(
                "/v1/grants",
                json={
                    "integration_id": iid,
                    "user_id": f"rot-user-{i}",
                    "refresh_token": rt,
                    "access_token": at,
                    "expires_at": expires,
                    "verify": False,
                },
            )
            assert g.status_code == 201, g.text
            grants[g.json()["id"]] = at
            refresh.append(rt)
        w = c.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks", "events": ["*"]})
        assert w.status_code == 201, w.text
    return {"iid": iid, "client_secret": client_secret, "grants": grants, "refresh": refresh, "whsec": w.json()["secret"]}


def read_tokens(s: Server, grants: dict[str, str]) -> None:
    with s.client() as c:
        for gid, at in grants.items():
            r = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 60})
            assert r.status_code == 200, r.text
            assert r.json()["access_token"] == at


def assert_no_traceback(*logs: str) -> None:
    for log in logs:
        assert "Traceback" not in log, log[-3000:]


def spawn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err, open(log.with_suffix(".stdout"), "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "grantkeeper.cli", "serve", "--port", str(port), "--no-worker"],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def wait_listening(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(base + "/readyz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("server did not listen")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ rotation end to end


def test_rotation_rewraps_everything_and_old_key_can_go(backend: str, tmp_path: Path) -> None:
    db = new_database(backend, tmp_path)
    port = free_port()
    key_a, key_b = master_key("ka"), master_key("kb")
    env_a = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=key_a)
    servers: list[Server] = []
    try:
        s1 = start_server(env_a, port, tmp_path / "a.log", db, worker=False)
        servers.append(s1)
        data = populate(s1)
        read_tokens(s1, data["grants"])
        s1.stop()
        before = key_ids(db)
        # one keyring key (wrapped under ka in the database) seals everything
        assert len(before) == 1 and sum(before.values()) == 1 + 4 * 2 + 1
        (first_kek,) = before
        assert first_kek.startswith("kr")

        # add key B in front: new writes use B, old data still reads
        env_ba = dict(env_a, GRANTKEEPER_MASTER_KEYS=f"{key_b},{key_a}")
        s2 = start_server(env_ba, port, tmp_path / "b.log", db, worker=False, admin_key=s1.admin_key)
        servers.append(s2)
        assert "GRANTKEEPER_ADMIN_KEY" not in (tmp_path / "b.stdout").read_text()  # only on first start
        ready = httpx.get(s2.base_url + "/readyz").json()
        assert [r["id"] for r in ready["roots"]] == ["kb", "ka"]
        assert ready["roots"][1]["state"] == "ok" and ready["roots"][1]["backend"] == "local"
        assert ready["primary_key_id"] == first_kek  # until `keys rotate`, the keyring stays under ka
        read_tokens(s2, data["grants"])

        out = s2.cli("keys", "rotate", "--json")
        report = json.loads(out.stdout)
        assert report["root_key_id"] == "kb"
        assert report["keyring_rewrapped"] == 2  # the key-encryption key and the derivation secret
        assert report["rewrapped"] == 1 + 4 + 1  # rows: integration, grants, webhook endpoint
        assert report["failed"] == 0 and report["remaining_by_key"] == {}
        assert report["examined"] >= report["rewrapped"]
        assert report["retired_keyring_keys"] == [first_kek]
        assert set(key_ids(db)) == set(report["new_keyring_keys"]) == {report["primary_key_id"]}
        read_tokens(s2, data["grants"])  # online: the running server never noticed

        again = json.loads(s2.cli("keys", "rotate", "--json").stdout)
        assert again["rewrapped"] == 6 and again["failed"] == 0  # a new keyring key each time
        assert again["examined"] == report["examined"]
        s2.stop()

        # retire key A: nothing is lost
        env_b = dict(env_a, GRANTKEEPER_MASTER_KEYS=key_b)
        s3 = start_server(env_b, port, tmp_path / "c.log", db, worker=False, admin_key=s1.admin_key)
        servers.append(s3)
        read_tokens(s3, data["grants"])
        with s3.client() as c:
            assert c.get(f"/v1/integrations/{data['iid']}").json()["client_secret_set"] is True
        opened = open_all(db, key_b)
        values = set(opened.values())
        assert data["client_secret"].encode() in values
        assert data["whsec"].encode() in values
        assert {at.encode() for at in data["grants"].values()} <= values
        assert {rt.encode() for rt in data["refresh"]} <= values
        with pytest.raises(ConfigError, match="not in GRANTKEEPER_MASTER_KEYS"):
            open_all(db, key_a)  # the keyring is wrapped under kb only now
        assert_no_traceback(*(s.log_text() for s in servers))
    finally:
        for s in servers:
            s.stop()
        db.drop()


def test_rotate_cli_progress_bar_and_human_output(tmp_path: Path) -> None:
    db = new_database("sqlite", tmp_path)
    port = free_port()
    key_a, key_b = master_key("ka"), master_key("kb")
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=key_a)
    s = start_server(env, port, tmp_path / "a.log", db, worker=False)
    try:
        populate(s)
    finally:
        s.stop()
    env_ba = dict(env, GRANTKEEPER_MASTER_KEYS=f"{key_b},{key_a}", COLUMNS="100")
    out = subprocess.run(
        [sys.executable, "-m", "grantkeeper.cli", "keys", "rotate"], env=env_ba, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "(root key kb)" in out.stderr and "re-wrapping under kr" in out.stderr  # the progress bar
    assert "re-wrapped: 6" in out.stdout
    assert key_a.partition(":")[2] not in out.stdout + out.stderr
    assert key_b.partition(":")[2] not in out.stdout + out.stderr


# ------------------------------------------------------------------ wrong or missing keys (P5)


@pytest.mark.parametrize("wrong", ["other-id", "same-id-other-material"])
def test_wrong_key_refuses_to_run(backend: str, tmp_path: Path, wrong: str) -> None:
    """v2 contract: serve, worker and the CLI refuse with one line naming the key, exit != 0."""
    db = new_database(backend, tmp_path)
    port = free_port()
    key_a = master_key("ka")
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=key_a)
    s = start_server(env, port, tmp_path / "a.log", db, worker=False)
    try:
        data = populate(s)
        s.stop()
        bad = master_key("kc") if wrong == "other-id" else master_key("ka")
        bad_env = dict(env, GRANTKEEPER_MASTER_KEYS=bad)
        for command in (["serve", "--port", str(port)], ["worker"], ["keys", "rotate"], ["audit", "verify"], ["grants", "list"]):
            out = subprocess.run(
                [sys.executable, "-m", "grantkeeper.cli", *command], env=bad_env, capture_output=True, text=True, timeout=60
            )
            assert out.returncode != 0, (command, out.stderr)
            lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
            assert len(lines) == 1, out.stderr
            assert "Traceback" not in out.stderr
            assert "'ka'" in lines[0], lines[0]
            if wrong == "same-id-other-material":
                assert "(local)" in lines[0]
            assert bad.partition(":")[2] not in out.stderr + out.stdout
        # the right key still opens everything
        s = start_server(env, port, tmp_path / "b.log", db, worker=False, admin_key=s.admin_key)
        read_tokens(s, data["grants"])
    finally:
        s.stop()
        db.drop()


def test_lost_development_key_file_makes_readyz_fail(tmp_path: Path) -> None:
    db = new_database("sqlite", tmp_path)
    port = free_port()
    env = server_env(db, port, tmp_path)
    del env["GRANTKEEPER_MASTER_KEYS"]
    s = start_server(env, port, tmp_path / "a.log", db, worker=False)
    proc = None
    try:
        assert "DEVELOPMENT key file" in s.log_text()
        populate(s)
        s.stop()
        key_file = Path(db.url.partition(":///")[2] + ".key")
        assert key_file.exists()
        # restarting with the file keeps working
        s = start_server(env, port, tmp_path / "b.log", db, worker=False, admin_key=s.admin_key)
        s.stop()
        key_file.unlink()
        log = tmp_path / "lost.log"
        proc = spawn(env, port, log)
        assert proc.wait(timeout=60) != 0  # a new key file is made, but it opens nothing: refused
        assert "root key 'dev1' (local)" in log.read_text()
        assert_no_traceback(log.read_text())
    finally:
        if proc is not None:
            stop(proc)
        s.stop()


def test_empty_database_is_ready_with_any_key(tmp_path: Path) -> None:
    db = new_database("sqlite", tmp_path)
    port = free_port()
    s = start_server(server_env(db, port, tmp_path), port, tmp_path / "a.log", db, worker=False)
    try:
        assert httpx.get(s.base_url + "/readyz").json()["status"] == "ready"
    finally:
        s.stop()


# ------------------------------------------------------------------ unsafe settings refuse to start


def _run_cli(env_over: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_")}
    env.update(env_over)
    return subprocess.run(
        [sys.executable, "-m", "grantkeeper.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/never_created"


@pytest.mark.parametrize("command", [("serve", "--port", "1"), ("worker",), ("keys", "rotate"), ("api-keys", "list")])
def test_postgres_without_master_keys_refuses_to_start(command: tuple[str, ...]) -> None:
    out = _run_cli({"GRANTKEEPER_DATABASE_URL": PG_URL}, *command)
    assert out.returncode != 0
    line = _one_line(out.stderr)
    assert "GRANTKEEPER_MASTER_KEYS" in line


def _b64(n: int) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


@pytest.mark.parametrize("db_url", ["sqlite+aiosqlite:///{tmp}/gk.db", PG_URL])
@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ("prod-1:" + _b64(16), "prod-1"),
        ("prod-1:" + _b64(48), "prod-1"),
        ("prod-1:!!!not-base64!!!", "prod-1"),
        ("prod-1:" + _b64(32) + ",prod-1:" + _b64(32), "prod-1"),
        (_b64(32), "entry 1"),
        ("ok:" + _b64(32) + ",bad id:" + _b64(32), "entry 2"),
        (",", "no key"),
    ],
    ids=["short", "long", "not-base64", "duplicate-id", "no-id", "bad-id", "empty"],
)
def test_malformed_master_keys_refuse_to_start(tmp_path: Path, db_url: str, keys: str, named: str) -> None:
    out = _run_cli({"GRANTKEEPER_DATABASE_URL": db_url.format(tmp=tmp_path), "GRANTKEEPER_MASTER_KEYS": keys}, "serve", "--port", "1")
    assert out.returncode != 0
    line = _one_line(out.stderr)
    assert named in line
    for part in keys.split(","):
        material = part.partition(":")[2] or part
        if len(material) > 8:
            assert material not in line
    assert not (tmp_path / "gk.db").exists()  # refused before touching the database


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GRANTKEEPER_PUBLIC_URL", "ftp://x"),
        ("GRANTKEEPER_REFRESH_LEASE_SECONDS", "1"),
        ("GRANTKEEPER_DB_POOL_SIZE", "0"),
        ("GRANTKEEPER_LOG_LEVEL", "LOUD"),
    ],
)
def test_other_unsafe_settings_refuse_to_start(tmp_path: Path, var: str, value: str) -> None:
    out = _run_cli({"GRANTKEEPER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gk.db", var: value}, "serve", "--port", "1")
    assert out.returncode != 0
    assert var in _one_line(out.stderr)


# ------------------------------------------------------------------ rotation in process: resumable, CAS, failures


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def seeded(database: Database) -> AsyncIterator[tuple[Any, Vault, str, str, Database]]:
    db = database
    key_a, key_b = master_key("ka"), master_key("kb")
    async with engine_for(Settings(database_url=db.url, master_keys=key_a)) as engine:  # type: ignore[arg-type]
        await _seed(engine, Vault(Keyring.parse(key_a)))
        yield engine, Vault(Keyring.parse(f"{key_b},{key_a}")), key_a, key_b, db


async def _seed(engine: Any, old: Vault) -> None:
    async with engine.begin() as conn:
        env_id = "00000000-0000-4000-8000-000000000001"
        await conn.execute(environments.insert().values(id=env_id, name="default", created_at=1.0))
        for i in range(7):
            iid = f"i{i}"
            await integration_store.upsert(
                conn,
                env_id,
                iid,
                {
                    "provider": "oauth2",
                    "client_id": "c",
                    "client_secret_ct": old.seal(f"secret-{i}", aad_for(env_id, "integrations", iid, "client_secret")),
                    "scopes": [],
                    "return_urls": [RETURN],
                    "authorization_params": {},
                    "settings": {},
                    "token_export": "never",
                    "connect_page": False,
                },
                1.0,
            )


@pytest.mark.anyio
async def test_rotation_is_resumable(seeded: tuple[Any, Vault, str, str, Database]) -> None:
    engine, vault, _, key_b, db = seeded
    assert await count_pending(engine, vault) == 7

    class Interrupted(Exception):
        pass

    def boom(_: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await rotate(engine, vault, batch=3, progress=boom)
    partial = key_ids(db)
    assert partial == Counter({"kb": 3, "ka": 4})  # the first batch committed
    done: list[int] = []
    report = await rotate(engine, vault, batch=3, progress=done.append)
    assert report.rewrapped == 4 and report.failed == 0 and report.examined == 7
    assert sum(done) == 7
    assert key_ids(db) == Counter({"kb": 7})
    assert {v.decode() for v in open_all(db, key_b).values()} == {f"secret-{i}" for i in range(7)}
    assert await probe(engine, Vault(Keyring.parse(key_b))) is True
    assert await probe(engine, Vault(Keyring.parse(master_key("kz")))) is False


@pytest.mark.anyio
async def test_rotation_skips_corrupt_rows_and_goes_on(seeded: tuple[Any, Vault, str, str, Database]) -> None:
    engine, vault, key_a, _, db = seeded
    from sqlalchemy import update

    from grantkeeper.store.tables import integrations

    async with engine.begin() as conn:
        row = (await conn.execute(integrations.select().where(integrations.c.id == "i3"))).mappings().one()
        bad = bytearray(row["client_secret_ct"])
        bad[-1] ^= 1
        await conn.execute(update(integrations).where(integrations.c.id == "i3").values(client_secret_ct=bytes(bad)))
        # one value moved to another row: must not open there either
        i5 = (await conn.execute(integrations.select().where(integrations.c.id == "i5"))).mappings().one()
        await conn.execute(update(integrations).where(integrations.c.id == "i6").values(client_secret_ct=i5["client_secret_ct"]))
    report = await rotate(engine, vault)
    assert report.failed == 2 and report.rewrapped == 5
    ids = key_ids(db)
    assert ids == Counter({"kb": 5, "ka": 2})  # the two bad ones are left exactly as they were
    again = await rotate(engine, vault)
    assert again.rewrapped == 0 and again.failed == 2


@pytest.mark.anyio
async def test_rotation_does_not_overwrite_a_concurrent_write(
    seeded: tuple[Any, Vault, str, str, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row rewritten between rotation's read and its write keeps the newer value (CAS)."""
    import contextlib

    import grantkeeper.rotation as rotation_module
    from grantkeeper.store.tables import integrations

    engine, vault, _, key_b, db = seeded
    env_id = "00000000-0000-4000-8000-000000000001"
    real_reading = rotation_module.reading
    fired = False

    @contextlib.asynccontextmanager
    async def reading_then_concurrent_write(eng: Any) -> AsyncIterator[Any]:
        nonlocal fired
        async with real_reading(eng) as conn:
            yield conn
        if not fired:  # after rotation read its first batch, before it writes it
            fired = True
            async with engine.begin() as w:
                await w.execute(
                    integrations.update()
                    .where(integrations.c.id == "i0")
                    .values(client_secret_ct=vault.seal("fresh-secret", aad_for(env_id, "integrations", "i0", "client_secret")))
                )

    monkeypatch.setattr(rotation_module, "reading", reading_then_concurrent_write)
    report = await rotate(engine, vault)
    assert fired
    assert report.skipped_changed == 1 and report.rewrapped == 6
    opened = open_all(db, key_b)
    assert opened[("integrations", "i0", "client_secret")] == b"fresh-secret"
    assert set(key_ids(db)) == {"kb"}


@pytest.mark.anyio
async def test_rotation_catches_writes_of_an_old_config_process(
    seeded: tuple[Any, Vault, str, str, Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, review item 6: a process still running with the old key first writes a row
    the rotation's pass has already passed; the final count by key id finds it and
    rotation goes on until nothing is left under the old key."""
    import grantkeeper.rotation as rotation_module
    from grantkeeper.rotation import count_by_key, rotate_until_done
    from grantkeeper.store.tables import integrations

    engine, vault, key_a, key_b, db = seeded
    old_config = Vault(Keyring.parse(key_a))
    env_id = "00000000-0000-4000-8000-000000000001"
    real_rotate = rotation_module.rotate
    passes = {"n": 0}

    async def pass_then_old_process_writes(*args: Any, **kw: Any) -> Any:
        report = await real_rotate(*args, **kw)
        passes["n"] += 1
        if passes["n"] == 1:  # behind the cursor: the pass will not come back to it
            blob = old_config.seal("written-late", aad_for(env_id, "integrations", "i0", "client_secret"))
            async with engine.begin() as w:
                await w.execute(integrations.update().where(integrations.c.id == "i0").values(client_secret_ct=blob))
        return report

    monkeypatch.setattr(rotation_module, "rotate", pass_then_old_process_writes)
    report = await rotate_until_done(engine, vault, batch=3)
    assert passes["n"] == 2 and report.passes == 2
    assert report.remaining == {}
    assert await count_by_key(engine, vault) == Counter()
    assert key_ids(db) == Counter({"kb": 7})
    assert open_all(db, key_b)[("integrations", "i0", "client_secret")] == b"written-late"


@pytest.mark.anyio
async def test_database_from_before_the_keyring_keeps_working_and_moves_to_v2(
    seeded: tuple[Any, Vault, str, str, Database],
) -> None:
    """Format-v1 values sealed directly under GRANTKEEPER_MASTER_KEYS (no keyring yet) open
    after the upgrade; `keys rotate` moves them under the keyring (v2); the derived keys
    (audit chain, UI sessions) keep their old value."""
    from grantkeeper.rotation import rotate_until_done
    from grantkeeper.runtime import unseal

    engine, _, key_a, _, db = seeded
    assert {r["blob"][0] for r in stored_rows(db)} == {1}
    settings = Settings(database_url=db.url, master_keys=key_a)  # type: ignore[arg-type]
    keys = await unseal(settings, engine)  # creates the keyring, wrapped under ka
    before = {k: v.decode() for k, v in open_all(db, key_a).items()}
    assert before == {("integrations", f"i{i}", "client_secret"): f"secret-{i}" for i in range(7)}
    assert keys.vault.derive_key(b"audit-chain") == Vault(Keyring.parse(key_a)).derive_key(b"audit-chain")
    report = await rotate_until_done(engine, keys.vault)
    assert report.rewrapped == 7 and report.remaining == {}
    rows = stored_rows(db)
    assert {r["blob"][0] for r in rows} == {2}
    assert {r["blob"][2 : 2 + r["blob"][1]].decode() for r in rows} == {keys.vault.primary_key_id}
    assert {k: v.decode() for k, v in open_all(db, key_a).items()} == before
