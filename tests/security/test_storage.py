"""Storage properties beyond tests/unit/vault and test_foundation: P7 (the audit log holds no
token values, only ids, generations and keyed hashes) and the guard that enforces it."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import SecretStr
from tests.security.fake_as import FakeAS
from tests.security.test_oauth_client import audit_rows, exercise
from tests.support.gk import Server, master_key
from tests.support.oidc import OidcServer

from grantkeeper.config import Settings
from grantkeeper.store import audit as audit_store
from grantkeeper.store.db import create_engine
from grantkeeper.store.migrate import upgrade


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
