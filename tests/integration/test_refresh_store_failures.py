"""R3 and R5: the database write after a refresh, and responses without a refresh token.

In-process: a Runtime on the same database as a live server (so the grant holds a
real refresh token from the real oidc-provider), with the store write made to fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tests.support.flows import connect_grant, setup_oidc_integration
from tests.support.gk import running_server
from tests.support.oidc import OidcServer

from grantkeeper.config import Settings
from grantkeeper.errors import StoreUnavailable
from grantkeeper.grants import open_token
from grantkeeper.refresh import engine as refresh_engine
from grantkeeper.refresh import lease
from grantkeeper.runtime import open_runtime
from grantkeeper.store import grants as grant_store

pytestmark = pytest.mark.oidc


def _settings(env: dict[str, str]) -> Settings:
    return Settings(
        database_url=env["GRANTKEEPER_DATABASE_URL"],
        master_keys=env["GRANTKEEPER_MASTER_KEYS"],
        allow_private_networks=True,
        public_url=env["GRANTKEEPER_PUBLIC_URL"],
    )


def _operational() -> Exception:
    return OperationalError("UPDATE grants", {}, Exception("database is down"))


def _pool_timeout() -> Exception:
    # what an exhausted pool raises (issue 12: it was not retried, the caller got a 500)
    return PoolTimeout("QueuePool limit of size 20 overflow 0 reached, connection timed out")


def _reset() -> Exception:
    return ConnectionResetError("connection reset by peer")


@pytest.mark.parametrize(
    "failures, succeeds, error",
    [
        (2, True, _operational),
        (50, False, _operational),
        (3, True, _pool_timeout),
        (50, False, _pool_timeout),
        (2, True, _reset),
    ],
    ids=["operational-2", "operational-50", "pool-timeout-3", "pool-timeout-50", "reset-2"],
)
def test_store_write_failure_after_refresh(
    backend: str,
    tmp_path: Path,
    oidc: OidcServer,
    monkeypatch: pytest.MonkeyPatch,
    failures: int,
    succeeds: bool,
    error: object,
) -> None:
    with running_server(backend, tmp_path, worker=False) as gk:
        setup_oidc_integration(gk, oidc)
        gid = connect_grant(gk, oidc, "acme", "u-store")
        settings = _settings(gk.env)

        async def scenario() -> None:
            rt = await open_runtime(settings)
            try:
                async with rt.engine.connect() as conn:
                    rec = await grant_store.get_by_id_any_env(conn, gid)
                assert rec is not None
                real = lease.write_tokens
                left = {"n": failures}

                async def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
                    if left["n"] > 0:
                        left["n"] -= 1
                        raise error()  # type: ignore[operator]
                    return await real(*args, **kwargs)

                monkeypatch.setattr(lease, "write_tokens", flaky)
                monkeypatch.setattr(asyncio, "sleep", _fast_sleep)
                before = oidc.stats()["token"]["refresh_token"]
                if succeeds:
                    fresh = await refresh_engine.refresh(rt, rec.environment_id, gid, seen_version=rec.version, trigger="test")
                    assert fresh.version == rec.version + 1
                    assert open_token(rt.vault, fresh, "refresh_token") != open_token(rt.vault, rec, "refresh_token")
                else:
                    with pytest.raises(StoreUnavailable):
                        await refresh_engine.refresh(rt, rec.environment_id, gid, seen_version=rec.version, trigger="test")
                    async with rt.engine.connect() as conn:
                        after = await grant_store.get_by_id_any_env(conn, gid)
                    assert after is not None and after.version == rec.version, "nothing reported or stored as done"
                assert oidc.stats()["token"]["refresh_token"] == before + 1, "one provider call, the write retried"
            finally:
                await rt.close()

        asyncio.run(scenario())


_real_sleep = asyncio.sleep


async def _fast_sleep(delay: float, result: object = None) -> object:
    return await _real_sleep(min(delay, 0.001), result)


def test_response_without_refresh_token_keeps_the_old_one() -> None:
    """RFC 6749 section 6 (R5): token_columns seals the previous refresh token again."""
    from grantkeeper.clock import FakeClock
    from grantkeeper.grants import token_columns
    from grantkeeper.oauth.tokens import TokenSet
    from grantkeeper.providers import load_catalog
    from grantkeeper.vault import Keyring, Vault, generate_key_spec

    class _Rt:
        vault = Vault(Keyring.parse(generate_key_spec("k")))
        settings = Settings(database_url="sqlite+aiosqlite:///:memory:")
        clock = FakeClock()

    rt = _Rt()
    tokens = TokenSet(access_token="new-at", token_type="Bearer", refresh_token=None, expires_in=60, scope=None, id_token=None)
    stored = token_columns(
        rt,  # type: ignore[arg-type]
        load_catalog().get("oidc"),
        environment_id="e",
        grant_id="g",
        version=3,
        tokens=tokens,
        previous_refresh_token="old-rt",
        previous_scopes=("a", "b"),
        requested_scopes=None,
        now=1000.0,
    )
    from grantkeeper.grants import token_aad

    blob = stored.columns["refresh_token_ct"]
    assert rt.vault.open_str(blob, token_aad("e", "g", "refresh_token", 3)) == "old-rt"
    assert stored.columns["scopes"] == ["a", "b"]  # no scope in the reply: as granted before
    assert stored.expires_at == 1060.0
