"""Issue 17: root keys in AWS KMS (moto) and an HSM (SoftHSM2), a keyring in the database,
rotation across backends, a root per environment, and what happens when a root goes away.

Every test runs on SQLite and PostgreSQL against real processes (``grantkeeper serve``),
a real KMS endpoint over HTTP and a real PKCS#11 module.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.test_rotation_and_startup import key_ids, populate, read_tokens, stored_rows
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import (
    Database,
    Server,
    free_port,
    master_key,
    new_database,
    server_env,
    start_server,
)
from tests.support.oidc import OidcServer
from tests.support.roots import Hsm, Kms

# ------------------------------------------------------------------ helpers


def root_spec(request: pytest.FixtureRequest, kind: str, rid: str = "r1") -> tuple[str, dict[str, str]]:
    """A ``GRANTKEEPER_MASTER_KEYS`` entry of ``kind`` and the environment it needs."""
    if kind == "local":
        return master_key(rid), {}
    if kind == "kms":
        k: Kms = request.getfixturevalue("kms")
        return f"{rid}:aws-kms:{k.create_key()}", dict(k.env)
    h: Hsm = request.getfixturevalue("hsm")
    return f"{rid}:{h.create_key(rid + '-' + secrets.token_hex(2))}", dict(h.env)


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grantkeeper.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def refused(env: dict[str, str], port: int) -> str:
    """Start ``serve``; it must exit non-zero with one ``error:`` line, which is returned."""
    out = run_cli(env, "serve", "--port", str(port), "--no-worker", timeout=90)
    assert out.returncode != 0, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


def keyring_materials(env: dict[str, str]) -> list[bytes]:
    """The keyring's keys in clear, from a process of its own (as a server unseals them)."""
    code = (
        "import asyncio, sys\n"
        "from grantkeeper.config import Settings\n"
        "from grantkeeper.runtime import unseal\n"
        "from grantkeeper.store.db import create_engine\n"
        "async def go():\n"
        "    s = Settings(); e = create_engine(s)\n"
        "    k = await unseal(s, e)\n"
        "    print(' '.join(m.hex() for m in k._material.values()))\n"
        "    await e.dispose()\n"
        "asyncio.run(go())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    return [bytes.fromhex(h) for h in out.stdout.split()]


def database_dump(db: Database) -> bytes:
    """Every value of every table, as bytes (bytea/BLOB raw, everything else as text)."""
    import asyncio

    from sqlalchemy import select

    from grantkeeper.config import Settings
    from grantkeeper.store.db import create_engine
    from grantkeeper.store.tables import metadata

    chunks: list[bytes] = []

    async def go() -> None:
        engine = create_engine(Settings(database_url=db.url, master_keys=master_key()))  # type: ignore[arg-type]
        try:
            async with engine.connect() as conn:
                for table in metadata.sorted_tables:
                    for row in (await conn.execute(select(table))).all():
                        for v in row:
                            chunks.append(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode())
        finally:
            await engine.dispose()

    t = threading.Thread(target=asyncio.run, args=(go(),))
    t.start()
    t.join()
    return b"\x00".join(chunks)


def assert_no_unwrapped_key(db: Database, env: dict[str, str]) -> None:
    materials = keyring_materials(env)
    assert len(materials) >= 2 and all(len(m) == 32 for m in materials)
    dump = database_dump(db)
    for m in materials:
        for form in (m, m.hex().encode(), base64.b64encode(m), base64.urlsafe_b64encode(m).rstrip(b"=")):
            assert form not in dump


def keyring_rows(db: Database) -> list[dict[str, Any]]:
    import asyncio

    from sqlalchemy import select

    from grantkeeper.config import Settings
    from grantkeeper.store.db import create_engine
    from grantkeeper.store.tables import keyring_keys

    out: list[dict[str, Any]] = []

    async def go() -> None:
        engine = create_engine(Settings(database_url=db.url, master_keys=master_key()))  # type: ignore[arg-type]
        try:
            async with engine.connect() as conn:
                out.extend(dict(m) for m in (await conn.execute(select(keyring_keys))).mappings())
        finally:
            await engine.dispose()

    t = threading.Thread(target=asyncio.run, args=(go(),))
    t.start()
    t.join()
    return out


def import_grant(s: Server, key: str, integration: str, user: str) -> tuple[str, str]:
    at = "at_" + secrets.token_urlsafe(20)
    expires = (datetime.now(UTC) + timedelta(hours=3)).isoformat().replace("+00:00", "Z")
    with s.client(key) as c:
        r = c.put(
            f"/v1/integrations/{integration}",
            json={
                "provider": "oauth2",
                "client_id": "c-" + integration,
                "client_secret": "cs_" + secrets.token_urlsafe(12),
                "scopes": ["read"],
                "return_urls": ["https://app.example.com/done"],
                "endpoints": {"authorization_url": "http://127.0.0.1:9/a", "token_url": "http://127.0.0.1:9/t"},
            },
        )
        assert r.status_code in (200, 201), r.text
        g = c.post(
            "/v1/grants",
            json={"integration_id": integration, "user_id": user, "refresh_token": "rt_" + secrets.token_urlsafe(20), "access_token": at, "expires_at": expires, "verify": False},
        )
        assert g.status_code == 201, g.text
        return g.json()["id"], at


def token(s: Server, key: str, gid: str) -> httpx.Response:
    # min_ttl 0: the stored token is the answer while it lives (the provider's are 60 s, and
    # under the v2 min_ttl a longer min_ttl would refresh, changing the token between reads)
    with s.client(key) as c:
        return c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0})


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Reader:
    """Token reads in a loop from another thread; every answer must be the right token."""

    def __init__(self, s: Server, grants: dict[str, str]) -> None:
        self.s, self.grants = s, grants
        self.ok = 0
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.s.client() as c:
            while not self._stop.is_set():
                for gid, at in self.grants.items():
                    r = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 60})
                    if r.status_code == 200 and r.json()["access_token"] == at:
                        self.ok += 1
                    else:
                        self.bad.append(f"{r.status_code} {r.text[:200]}")

    def __enter__(self) -> Reader:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=30)


# ------------------------------------------------------------------ a server on a KMS or HSM root


@pytest.mark.oidc
@pytest.mark.parametrize("kind", ["kms", "hsm"])
def test_server_on_kms_or_hsm_root_connects_refreshes_restarts_reads_back(
    backend: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path, oidc: OidcServer
) -> None:
    spec, extra = root_spec(request, kind)
    db = new_database(backend, tmp_path)
    port = free_port()
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=spec, **extra)
    s = start_server(env, port, tmp_path / "a.log", db, worker=False)
    try:
        ready = httpx.get(s.base_url + "/readyz").json()
        assert ready["roots"][0]["backend"] == {"kms": "aws-kms", "hsm": "pkcs11"}[kind]
        assert ready["roots"][0]["state"] == "ok"
        setup_oidc_integration(s, oidc)
        gid = connect_grant(s, oidc, "acme", "u-root")
        first = token(s, s.admin_key, gid).json()["access_token"]
        with s.client() as c:
            refreshed = c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True})
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["access_token"] != first
        data = populate(s)
        s.stop()
        s = start_server(env, port, tmp_path / "b.log", db, worker=False, admin_key=s.admin_key)
        read_tokens(s, data["grants"])
        again = token(s, s.admin_key, gid)
        assert again.status_code == 200 and again.json()["access_token"] == refreshed.json()["access_token"]
        with s.client() as c:  # the rotated refresh token came back too: refresh once more
            assert c.post(f"/v1/grants/{gid}/token", json={"force_refresh": True}).status_code == 200
        # the keyring is stored only wrapped under the root; all values under keyring keys
        rows = keyring_rows(db)
        assert {r["root_key_id"] for r in rows} == {"r1"}
        assert set(key_ids(db)) <= {r["id"] for r in rows}
        assert_no_unwrapped_key(db, env)
        assert "Traceback" not in s.log_text()
    finally:
        s.stop()
        db.drop()


# ------------------------------------------------------------------ rotation across backends


def test_rotate_local_to_kms_to_hsm_while_token_reads_go_on(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    local = master_key("l1")
    kms_spec, kms_env = root_spec(request, "kms", "k1")
    hsm_spec, hsm_env = root_spec(request, "hsm", "h1")
    db = new_database(backend, tmp_path)
    port = free_port()
    base_env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=local, **kms_env, **hsm_env)
    s = start_server(base_env, port, tmp_path / "0.log", db, worker=False)
    servers = [s]
    try:
        data = populate(s)
        values_before = {r["blob"] for r in stored_rows(db)}
        for step, (keys, root) in enumerate(((f"{kms_spec},{local}", "k1"), (f"{hsm_spec},{kms_spec}", "h1")), 1):
            env = dict(base_env, GRANTKEEPER_MASTER_KEYS=keys)
            s.stop()  # a rolling restart with the new root first ...
            s = start_server(env, port, tmp_path / f"{step}.log", db, worker=False, admin_key=s.admin_key)
            servers.append(s)
            with Reader(s, data["grants"]) as reader:  # ... then rotate while reads go on
                out = run_cli(env, "keys", "rotate", "--json")
                assert out.returncode == 0, out.stderr[-3000:]
                report = json.loads(out.stdout)
                time.sleep(1)
            assert not reader.bad, reader.bad[:3]
            assert reader.ok > 0
            assert report["root_key_id"] == root and report["remaining_by_key"] == {} and report["failed"] == 0
            assert report["rewrapped"] == 6
            assert {r["root_key_id"] for r in keyring_rows(db)} == {root}
            assert set(key_ids(db)) == set(report["new_keyring_keys"])
        # the old roots can go: only the HSM key remains, nothing is lost
        env = dict(base_env, GRANTKEEPER_MASTER_KEYS=hsm_spec)
        s.stop()
        s = start_server(env, port, tmp_path / "last.log", db, worker=False, admin_key=s.admin_key)
        servers.append(s)
        read_tokens(s, data["grants"])
        with s.client() as c:
            assert c.get(f"/v1/integrations/{data['iid']}").json()["client_secret_set"] is True
        assert {r["blob"] for r in stored_rows(db)}.isdisjoint(values_before)
        assert_no_unwrapped_key(db, env)
        for srv in servers:
            assert "Traceback" not in srv.log_text()
    finally:
        for srv in servers:
            srv.stop()
        db.drop()


# ------------------------------------------------------------------ wrong or missing root


def test_wrong_or_missing_kms_root_refuses_to_start(backend: str, kms: Kms, tmp_path: Path) -> None:
    arn = kms.create_key()
    db = new_database(backend, tmp_path)
    port = free_port()
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=f"r1:aws-kms:{arn}", **kms.env)
    s = start_server(env, port, tmp_path / "a.log", db, worker=False)
    try:
        data = populate(s)
        s.stop()
        other = kms.create_key()  # another KMS key under the same id
        line = refused(dict(env, GRANTKEEPER_MASTER_KEYS=f"r1:aws-kms:{other}"), port)
        assert "'r1'" in line and "aws-kms" in line, line
        line = refused(dict(env, GRANTKEEPER_MASTER_KEYS=master_key("r2")), port)  # missing
        assert "'r1'" in line and "GRANTKEEPER_MASTER_KEYS" in line, line
        for cmd in (["worker"], ["keys", "rotate"], ["grants", "list"]):
            out = run_cli(dict(env, GRANTKEEPER_MASTER_KEYS=f"r1:aws-kms:{other}"), *cmd)
            assert out.returncode != 0 and "'r1'" in out.stderr, (cmd, out.stderr[-2000:])
        s = start_server(env, port, tmp_path / "b.log", db, worker=False, admin_key=s.admin_key)
        read_tokens(s, data["grants"])
    finally:
        s.stop()
        db.drop()


# ------------------------------------------------------------------ a root per environment


def _tenant(s: Server, env: dict[str, str], root: str) -> tuple[str, str]:
    out = run_cli(env, "environments", "create", "tenant", "--root-key", root, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    env_id = json.loads(out.stdout)["id"]
    k = run_cli(env, "api-keys", "create", "--name", "tenant admin", "--scope", "admin", "--environment", "tenant", "--json")
    assert k.returncode == 0, k.stderr[-2000:]
    return env_id, json.loads(k.stdout)["key"]


def test_tenant_hsm_key_destroyed_only_that_environment_answers_503(
    backend: str, hsm: Hsm, tmp_path: Path
) -> None:
    label = "tenant-" + secrets.token_hex(2)
    uri = hsm.create_key(label)
    db = new_database(backend, tmp_path)
    port = free_port()
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=f"{master_key('d1')},h1:{uri}", **hsm.env)
    s = start_server(env, port, tmp_path / "a.log", db, worker=True)
    try:
        env_id, tkey = _tenant(s, env, "h1")
        dgid, dat = import_grant(s, s.admin_key, "d-int", "u1")
        tgid, tat = import_grant(s, tkey, "t-int", "u2")
        assert token(s, tkey, tgid).json()["access_token"] == tat
        roots = {r["id"]: r for r in httpx.get(s.base_url + "/readyz").json()["roots"]}
        assert roots["h1"]["backend"] == "pkcs11" and roots["h1"]["environments"] == [env_id]
        # the tenant's secrets are under its own keyring only
        tenant_keks = {r["id"] for r in keyring_rows(db) if r["environment_id"] == env_id}
        assert tenant_keks and all(
            r["blob"][2 : 2 + r["blob"][1]].decode() in tenant_keks for r in stored_rows(db) if r["environment_id"] == env_id
        )

        hsm.destroy_key(label)  # crypto-shredding
        wait_for(lambda: token(s, tkey, tgid).status_code == 503, what="the tenant to answer 503")
        r = token(s, tkey, tgid)
        assert r.json()["code"] == "keys_unavailable" and tat not in r.text
        with s.client(tkey) as c:
            w = c.post("/v1/grants", json={"integration_id": "t-int", "user_id": "u3", "refresh_token": "rt-x", "verify": False})
            assert w.status_code == 503 and w.json()["code"] == "keys_unavailable"
        assert token(s, s.admin_key, dgid).json()["access_token"] == dat  # the others are unaffected
        import_grant(s, s.admin_key, "d-int", "u4")
        roots = {r["id"]: r for r in httpx.get(s.base_url + "/readyz").json()["roots"]}
        assert roots["h1"]["state"] == "unavailable"
        # a restart: the process starts; still only the tenant is affected (for good)
        s.stop()
        s = start_server(env, port, tmp_path / "b.log", db, worker=True, admin_key=s.admin_key)
        assert token(s, s.admin_key, dgid).json()["access_token"] == dat
        assert token(s, tkey, tgid).json()["code"] == "keys_unavailable"
        assert "Traceback" not in s.log_text()
    finally:
        s.stop()
        db.drop()


def test_tenant_kms_unreachable_then_back_recovers_without_restart(
    backend: str, kms: Kms, tmp_path: Path
) -> None:
    arn = kms.create_key()
    db = new_database(backend, tmp_path)
    port = free_port()
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=f"{master_key('d1')},k1:aws-kms:{arn}", **kms.env)
    s = start_server(env, port, tmp_path / "a.log", db, worker=False)
    try:
        _, tkey = _tenant(s, env, "k1")
        dgid, dat = import_grant(s, s.admin_key, "d-int", "u1")
        tgid, tat = import_grant(s, tkey, "t-int", "u2")
        kms.pause()
        wait_for(lambda: token(s, tkey, tgid).status_code == 503, what="the tenant to answer 503")
        assert token(s, s.admin_key, dgid).json()["access_token"] == dat
        kms.resume()
        wait_for(lambda: token(s, tkey, tgid).status_code == 200, what="the tenant to recover")
        assert token(s, tkey, tgid).json()["access_token"] == tat
    finally:
        if kms.stopped:
            kms.resume()
        s.stop()
        db.drop()


# ------------------------------------------------------------------ the KMS down while serving


def test_kms_stopped_while_serving_reads_go_on_restart_refuses_until_back(
    backend: str, kms: Kms, tmp_path: Path
) -> None:
    arn = kms.create_key()
    db = new_database(backend, tmp_path)
    port = free_port()
    env = server_env(db, port, tmp_path, GRANTKEEPER_MASTER_KEYS=f"k1:aws-kms:{arn}", **kms.env)
    s = start_server(env, port, tmp_path / "a.log", db, worker=True)
    try:
        data = populate(s)
        kms.pause()
        t_end = time.monotonic() + 4  # several keyring re-checks fail meanwhile
        while time.monotonic() < t_end:
            read_tokens(s, data["grants"])
        gid, at = import_grant(s, s.admin_key, "late", "u9")  # writes go on too (keyring in memory)
        assert token(s, s.admin_key, gid).json()["access_token"] == at
        s.stop()
        line = refused(env, port)
        assert "'k1'" in line and "aws-kms" in line, line
        kms.resume()
        s = start_server(env, port, tmp_path / "b.log", db, worker=False, admin_key=s.admin_key)
        read_tokens(s, data["grants"])
        assert token(s, s.admin_key, gid).json()["access_token"] == at
    finally:
        if kms.stopped:
            kms.resume()
        s.stop()
        db.drop()
