"""The token read's grouped reads (PostgreSQL): under concurrency every caller gets exactly
what its own lone read returns (its key, the grant only in the key's environment, nothing
for an unknown key or a malformed grant id), whether it went alone or in a group."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from tests.contract.test_store_contract import grant_values
from tests.support.hotpath import run_on_hotpath

from grantkeeper.apikeys import create_key
from grantkeeper.store import environments, grants
from grantkeeper.store.hotpath import HotPath

NOW = 1_700_000_000.0


def test_grouped_reads_answer_each_caller_as_its_lone_read_would(tmp_path: Path) -> None:
    async def scenario(hot: HotPath, engine: AsyncEngine, _url: str) -> None:
        async with engine.begin() as conn:
            a = await environments.create(conn, "default", NOW)
            b = await environments.create(conn, "staging", NOW + 1)
            keys = [
                (await create_key(conn, environment_id=env, name=f"k{i}", scopes=["credentials:read"], integration_ids=None, now=NOW))[0]
                for i, env in enumerate((a, a, b))
            ]
            gids: list[str | None] = []
            for i in range(30):
                v = grant_values(
                    a if i % 3 else b, user_id=f"u{i}", version=i + 1, scopes=[f"s{i}"],
                    # what deciding on a refresh reads, varied row by row
                    refresh_token_ct=b"\x01rt" if i % 2 else None, last_refreshed_at=NOW - i,
                    retry_at=NOW + i if i % 4 == 0 else None, failure_code="x" if i % 5 == 0 else None,
                )
                await grants.insert_grant(conn, v)
                gids.append(str(v["id"]))
        gids += [None, "00000000-0000-4000-8000-000000000000"]
        pairs = [(k, g) for k in [*keys, "no-such-key"] for g in gids]
        lone = {p: await hot.read_token(*p) for p in pairs}
        assert hot._token_reads.grouped == 0  # one at a time: never grouped
        rng = random.Random(7)
        asked = [rng.choice(pairs) for _ in range(600)]
        answers = await asyncio.gather(*(hot.read_token(*p) for p in asked))
        assert hot._token_reads.grouped > 0
        for p, got in zip(asked, answers, strict=True):
            assert got == lone[p], p
        # the environment boundary holds in groups as alone
        env_of_key = {keys[0]: a, keys[1]: a, keys[2]: b}
        for p, got in zip(asked, answers, strict=True):
            if got[1] is not None:
                assert got[1].environment_id == env_of_key[p[0]]
        assert lone[("no-such-key", gids[1])] == (None, None)
        for i, gid in enumerate(gids[:30]):
            row = lone[(keys[0] if i % 3 else keys[2], gid)][1]
            assert row is not None and row.version == i + 1
            assert row.has_refresh_token is (i % 2 == 1)
            assert row.last_refreshed_at == NOW - i
            assert row.retry_at == (NOW + i if i % 4 == 0 else None)
            assert row.failure_code == ("x" if i % 5 == 0 else None)

    run_on_hotpath(tmp_path, scenario, size=3)
