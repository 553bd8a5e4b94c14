"""Storage properties beyond tests/unit/vault and test_foundation: P7 (the audit log holds no
token values, only ids, generations and keyed hashes) and the guard that enforces it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update
from tests.security.fake_as import FakeAS
from tests.security.test_oauth_client import audit_rows, exercise
from tests.support.gk import Server, free_port, master_key, running_server, start_server
from tests.support.oidc import OidcServer

from grantkeeper.config import Settings
from grantkeeper.store import audit as audit_store
from grantkeeper.store.db import create_engine
from grantkeeper.store.migrate import upgrade
from grantkeeper.store.tables import grants


@pytest.mark.oidc
def test_audit_log_holds_no_token_values(gk: Server, oidc: OidcServer, fake_as: FakeAS) -> None:
    """P7: after every flow, no audit event (detail included) contains a token, code, state,
    client secret or API key; token hand-outs are correlated by grant generation."""
    ex = exercise(gk, oidc, fake_as)
    rows = audit_rows(gk)
    actions = {r["action"] for r in rows}
    assert {"token.issued", "grant.created", "grant.deleted"} <= actions, actions
    dump = json.dumps(rows, default=str)
    leaked = sorted(s[:12] + "…" for s in ex.secrets if s and s in dump)
    assert not leaked, f"secrets in the audit log: {leaked}"
    issued = [r for r in rows if r["action"] == "token.issued"]
    assert all(isinstance(r["detail"].get("generation"), int) for r in issued)
    with gk.client() as c:
        api_dump = json.dumps(c.get("/v1/audit-events", params={"limit": 200}).json())
    assert not [s for s in ex.secrets if s and s in api_dump]
    # events from every write path (including the PostgreSQL hot path's raw INSERT) chain
    from tests.security.test_audit_chain import _seal_all, _verify_cli

    _seal_all(gk)  # whatever the worker has not sealed yet
    code, out = _verify_cli(gk)
    assert code == 0, out
    default = next(e for e in out["environments"] if e["name"] == "default")
    assert default["pending"] == 0 and default["sealed"] >= len(rows)


@pytest.mark.parametrize("key", ["access_token", "refresh_token", "id_token", "client_secret", "code_verifier", "api_key"])
def test_audit_append_refuses_secret_detail_keys(tmp_path: object, key: str) -> None:
    """P7 guard: writing a secret-named detail into the audit log is a programming error."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    upgrade(url)

    async def go() -> None:
        engine = create_engine(Settings(database_url=url, master_keys=SecretStr(master_key())))
        try:
            async with engine.begin() as conn:
                with pytest.raises(ValueError, match="secrets"):
                    await audit_store.append(
                        conn, environment_id="e", actor="a", action="x", now=1.0, detail={key: "v"}
                    )
                await audit_store.append(
                    conn, environment_id="e", actor="a", action="x", now=1.0, detail={"generation": 3}
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


# ---------------------------------------------------------------- C8, P5, P6 through the server


def _import(server: Server, user: str) -> str:
    with server.client() as c:
        c.put(
            "/v1/integrations/store",
            json={
                "provider": "oauth2",
                "client_id": "c",
                "client_secret": "s",
                "scopes": [],
                "return_urls": ["https://app.example/done"],
                "endpoints": {"authorization_url": "https://idp.example/a", "token_url": "https://idp.example/t"},
            },
        ).raise_for_status()
        r = c.post(
            "/v1/grants",
            json={
                "integration_id": "store",
                "user_id": user,
                "refresh_token": f"rt-{user}-0d9e",
                "access_token": f"at-{user}-0d9e",
                "expires_at": "2099-01-01T00:00:00Z",
                "verify": False,
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def _sql(server: Server, *statements: Any) -> list[Any]:
    async def go() -> list[Any]:
        engine = create_engine(Settings(database_url=server.db.url, master_keys=SecretStr(master_key())))
        out = []
        try:
            async with engine.begin() as conn:
                for st in statements:
                    res = await conn.execute(st)
                    out.append(res.mappings().all() if res.returns_rows else None)
        finally:
            await engine.dispose()
        return out

    return asyncio.run(go())


def test_swapped_or_flipped_ciphertexts_never_serve_another_users_token(gk: Server) -> None:
    """C8 / P2 / P6 end to end: swap the stored access-token ciphertexts of two users' grants,
    or flip one bit: the token endpoint answers an error, never 200 and never B's token."""
    a, b = _import(gk, "alice"), _import(gk, "bob")
    with gk.client() as c:
        assert c.post(f"/v1/grants/{a}/token", json={"min_ttl": 0}).json()["access_token"] == "at-alice-0d9e"
    (rows,) = _sql(gk, select(grants.c.id, grants.c.access_token_ct).where(grants.c.id.in_([a, b])))
    ct = {r["id"]: bytes(r["access_token_ct"]) for r in rows}
    _sql(
        gk,
        update(grants).where(grants.c.id == a).values(access_token_ct=ct[b]),
        update(grants).where(grants.c.id == b).values(access_token_ct=ct[a]),
    )
    with gk.client() as c:
        for gid in (a, b):
            r = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0})
            assert r.status_code != 200 and "0d9e" not in r.text, r.text
            assert r.status_code == 503 and r.json()["code"] == "keys_unavailable"  # v2: never 500
    flipped = bytearray(ct[a])
    flipped[-5] ^= 0x01
    _sql(gk, update(grants).where(grants.c.id == a).values(access_token_ct=bytes(flipped)))
    with gk.client() as c:
        r = c.post(f"/v1/grants/{a}/token", json={"min_ttl": 0})
        assert r.status_code == 503 and r.json()["code"] == "keys_unavailable"
    assert "Traceback" not in gk.log_text()


def test_wrong_master_key_never_serves_tokens(backend: str, tmp_path: Path) -> None:
    """P5: the same database under another master key: the server refuses to start or
    answers an error for every token; a missing key on PostgreSQL refuses to start."""
    with running_server(backend, tmp_path, worker=False) as first:
        gid = _import(first, "carol")
        first.stop()
        env = dict(first.env, GRANTKEEPER_MASTER_KEYS=master_key("t1"))
        port = free_port()
        env["GRANTKEEPER_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
        try:
            second = start_server(env, port, tmp_path / "wrong.log", first.db, worker=False, admin_key=first.admin_key)
        except RuntimeError:
            return  # refused to start: fine
        try:
            with second.client() as c:
                r = c.post(f"/v1/grants/{gid}/token", json={"min_ttl": 0})
                assert r.status_code in (500, 503) and "0d9e" not in r.text, r.text
        finally:
            second.stop()
        if backend == "postgres":
            env = dict(first.env)
            env.pop("GRANTKEEPER_MASTER_KEYS")
            p = subprocess.run(
                [sys.executable, "-m", "grantkeeper.cli", "serve", "--port", str(free_port())],
                env=env, capture_output=True, text=True, timeout=60,
            )
            assert p.returncode != 0 and "GRANTKEEPER_MASTER_KEYS" in p.stderr
