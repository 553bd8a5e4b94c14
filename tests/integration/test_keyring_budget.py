"""The nonce budget of a keyring key (NIST SP 800-38D: random 96-bit nonces, at most 2^32
wraps per key): counted in the database across processes, a new key rolled at
``GRANTKEEPER_KEK_MAX_WRAPS``, every process switching to it once all have loaded it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update
from tests.support.gk import Database, engine_for, master_key

from grantkeeper.config import Settings
from grantkeeper.errors import KeysUnavailable
from grantkeeper.store import keyring as keyring_store
from grantkeeper.store.tables import keyring_keys
from grantkeeper.vault import aad_for
from grantkeeper.vault.manager import HARD_LIMIT, KeyManager

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def setup(database: Database) -> AsyncIterator[tuple[Settings, Any]]:
    settings = Settings(database_url=database.url, master_keys=master_key("r1"), kek_max_wraps=20, keyring_check_interval=0.5)  # type: ignore[arg-type]
    async with engine_for(settings) as engine:
        yield settings, engine


def _aad(i: int) -> bytes:
    return aad_for("env-1", "grants", f"g{i}", "refresh_token", 0)


async def _keks(engine: Any) -> list[keyring_store.KeyringRow]:
    async with engine.connect() as conn:
        return [r for r in await keyring_store.list_rows(conn) if r.purpose == "kek"]


async def test_wraps_counted_across_processes_and_a_new_key_rolled(setup: tuple[Settings, Any]) -> None:
    settings, engine = setup
    a, b = KeyManager.from_settings(settings), KeyManager.from_settings(settings)  # two processes
    await a.start(engine)
    await b.start(engine)
    first = a.vault.primary_key_id
    assert b.vault.primary_key_id == first
    blobs = []
    for i in range(12):
        blobs.append((a.vault.seal(b"a%d" % i, _aad(i)), _aad(i)))
        blobs.append((b.vault.seal(b"b%d" % i, _aad(100 + i)), _aad(100 + i)))
    await a.count_wraps(engine)
    assert len(await _keks(engine)) == 1  # 12 of 20: no roll yet
    await b.count_wraps(engine)  # 24 in all, counted in the database
    keks = await _keks(engine)
    assert {r.id: r.wraps for r in keks}[first] == 24
    assert len(keks) == 2
    new = max(keks, key=lambda r: r.activate_at)
    assert new.activate_at > time.time()  # every process loads it before anyone seals with it
    await a.reload(engine)
    await b.reload(engine)
    assert a.vault.primary_key_id == first
    await asyncio.sleep(new.activate_at - time.time() + 0.1)
    for m in (a, b):
        assert m.vault.primary_key_id == new.id
        blob = m.vault.seal(b"fresh", _aad(999))
        assert m.vault.key_id(blob) == new.id
        for old, aad in blobs:  # what the old key wrapped still opens everywhere
            m.vault.open(old, aad)
    await a.count_wraps(engine)
    assert len(await _keks(engine)) == 2  # one roll, not one per process


async def test_a_key_at_its_hard_limit_seals_no_more(setup: tuple[Settings, Any]) -> None:
    settings, engine = setup
    m = KeyManager.from_settings(settings.model_copy(update={"kek_max_wraps": 2**31}))
    await m.start(engine)
    kid = m.vault.primary_key_id
    blob = m.vault.seal(b"x", _aad(1))
    async with engine.begin() as conn:
        await conn.execute(update(keyring_keys).where(keyring_keys.c.id == kid).values(wraps=HARD_LIMIT))
    await m.count_wraps(engine)
    with pytest.raises(KeysUnavailable):
        m.vault.seal(b"y", _aad(2))
    assert m.vault.open(blob, _aad(1)) == b"x"  # reading never stops
    assert len(await _keks(engine)) == 2  # and its successor is on the way
