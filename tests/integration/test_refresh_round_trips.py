"""An on-demand refresh reaches the provider in as few round trips as its safety allows,
against the real oidc-provider, on SQLite and PostgreSQL.

Every database round trip before the provider call delays every caller waiting on the
refresh (in a storm of a thousand callers, each one waits behind a whole turn of the
event loop). The integration is read in the claim's transaction, and a claim young
enough goes to the provider without renewing its lease first: its lease cannot have run
out, so nobody else can hold the grant or have stored a newer generation. A claim that
is not young enough still renews (fenced on its generation), so the lease always covers
the call.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event
from tests.integration import test_refresh_claims as claims
from tests.integration.test_refresh_claims import Vault, _assert_alive, _open
from tests.support.gk import Database
from tests.support.oidc import OidcServer

from grantkeeper.refresh import engine
from grantkeeper.runtime import Runtime

pytestmark = [pytest.mark.oidc, pytest.mark.anyio]


vault = claims.vault  # two vault processes on one database, and the grant they share


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _watch(rt: Runtime) -> tuple[list[str], list[int]]:
    """The UPDATEs of grants and the transactions begun on ``rt``'s engine from now on."""
    updates: list[str] = []
    begins = [0]

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE GRANTS"):
            updates.append(statement)

    def on_begin(conn: Any) -> None:
        begins[0] += 1

    event.listen(rt.engine.sync_engine, "before_cursor_execute", on_execute)
    event.listen(rt.engine.sync_engine, "begin", on_begin)
    return updates, begins


async def _refresh(rt: Runtime, v: Vault) -> None:
    fresh = await engine.refresh(rt, v.grant.environment_id, v.grant.id, seen_version=None, trigger="test")
    assert fresh.version == v.grant.version + 1


async def test_a_young_claim_goes_to_the_provider_without_a_renewal(vault: Vault, oidc: OidcServer) -> None:
    updates, begins = _watch(vault.api)
    await _refresh(vault.api, vault)
    # the claim and the write that stores the new generation (and lets the lease go): no renewal
    assert len(updates) == 2, updates
    # the claim's transaction (with the integration read) and the write's
    assert begins[0] == 2
    await _assert_alive(vault, oidc, vault.grant.version + 1)


async def test_a_claim_that_is_not_young_enough_renews_before_the_call(
    vault: Vault, oidc: OidcServer, database: Database
) -> None:
    # a lease only as long as the call needs: no claim is young enough to skip the renewal
    s = vault.api.settings
    assert s.master_keys is not None
    call_budget = s.http_timeout + sum(engine.PERSIST_DELAYS) + 2.0
    tight = await _open(database, s.master_keys.get_secret_value(), refresh_lease_seconds=call_budget)
    try:
        assert engine.fresh_claim_seconds(tight) == 0.0
        updates, _ = _watch(tight)
        await _refresh(tight, vault)
        assert len(updates) == 3, updates  # claim, renewal, write
    finally:
        await tight.close()
    await _assert_alive(vault, oidc, vault.grant.version + 1)
