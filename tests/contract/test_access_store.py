"""End-user access in the store, on SQLite and PostgreSQL: subject issuers and end-user tokens.

The store functions take the caller's connection; ``access.endusertokens`` and
``access.issuers`` are exercised on top of them with an explicit ``now``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.access import endusertokens, issuers
from grantkeeper.apikeys import Principal
from grantkeeper.errors import AlreadyExists, Forbidden, NotFound
from grantkeeper.store import access
from grantkeeper.store import tables as t

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0


def key(env: str, integrations: frozenset[str] | None = None) -> Principal:
    return Principal(key_id="k1", environment_id=env, scopes=frozenset({"connect"}), integration_ids=integrations)


def issuer_input(**over: object) -> issuers.SubjectIssuerInput:
    body: dict[str, object] = {
        "issuer": "https://login.example.com",
        "jwks_uri": "https://login.example.com/jwks",
        "audience": "gk",
        "allowed_origins": ["https://App.example.com:443", "http://localhost:3000"],
    }
    body.update(over)
    return issuers.SubjectIssuerInput.model_validate(body)


async def test_end_user_tokens_hash_only_expire_revoke_and_purge(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with engine.begin() as conn:
        minted = await endusertokens.mint(conn, key(a), endusertokens.CreateEndUserToken(user_id="u1", ttl=600), now=NOW)
        bound = await endusertokens.mint(
            conn, key(a, frozenset({"x", "y"})), endusertokens.CreateEndUserToken(user_id="u2"), now=NOW
        )
        with pytest.raises(Forbidden):
            await endusertokens.mint(
                conn, key(a, frozenset({"x"})), endusertokens.CreateEndUserToken(user_id="u2", integration_ids=["z"]), now=NOW
            )
    secret = minted["token"].split("_", 2)[2]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(t.end_user_tokens))).mappings().all()
        assert all(secret.encode() not in bytes(r["secret_hash"]) and minted["token"] not in str(dict(r)) for r in rows)
        rec = await endusertokens.lookup(conn, minted["token"], now=NOW + 599)
        assert rec is not None and (rec.user_id, rec.environment_id, rec.integration_ids) == ("u1", a, None)
        assert await endusertokens.lookup(conn, minted["token"], now=NOW + 600) is None  # expired
        assert await endusertokens.lookup(conn, minted["token"][:-1] + "x", now=NOW) is None  # wrong secret
        assert await endusertokens.lookup(conn, "gkut_nope_nope", now=NOW) is None
        brec = await endusertokens.lookup(conn, bound["token"], now=NOW)
        assert brec is not None and set(brec.integration_ids or ()) == {"x", "y"}  # the key's limits
    async with engine.begin() as conn:
        with pytest.raises(NotFound):
            await endusertokens.revoke(conn, key(b), minted["id"], now=NOW)  # another environment
        await endusertokens.revoke(conn, key(a), minted["id"], now=NOW + 1)
        await endusertokens.revoke(conn, key(a), minted["id"], now=NOW + 2)  # idempotent
    async with engine.connect() as conn:
        assert await endusertokens.lookup(conn, minted["token"], now=NOW + 3) is None
    async with engine.begin() as conn:
        assert await access.purge_expired(conn, NOW + 10_000) == 2
        assert await access.get_token(conn, minted["id"]) is None


async def test_subject_issuers_per_environment_and_unique_issuer_audience(engine: AsyncEngine, envs: tuple[str, str]) -> None:
    a, b = envs
    async with engine.begin() as conn:
        rec, created = await issuers.put_issuer(conn, a, "login", issuer_input(), allow_private=False, now=NOW)
        assert created and rec.allowed_origins == ("https://app.example.com", "http://localhost:3000")
        rec, created = await issuers.put_issuer(conn, a, "login", issuer_input(user_id_claim="email"), allow_private=False, now=NOW + 1)
        assert not created and rec.user_id_claim == "email" and rec.created_at == NOW
        with pytest.raises(AlreadyExists):  # the same (issuer, audience) in another environment
            await issuers.put_issuer(conn, b, "login", issuer_input(), allow_private=False, now=NOW)
        await issuers.put_issuer(conn, b, "login", issuer_input(audience="gk-staging", allowed_origins=["https://s.example"]), allow_private=False, now=NOW)
    async with engine.connect() as conn:
        assert [i.environment_id for i in await access.issuers_by_issuer(conn, "https://login.example.com")] == sorted([a, b])
        assert [i.audience for i in await access.issuers_by_issuer(conn, "https://login.example.com", b)] == ["gk-staging"]
        assert await access.origins(conn, a) == {"https://app.example.com", "http://localhost:3000"}
        assert await access.origins(conn) == {"https://app.example.com", "http://localhost:3000", "https://s.example"}
        assert [i.id for i in await access.list_issuers(conn, b)] == ["login"]
    async with engine.begin() as conn:
        await issuers.delete_issuer(conn, a, "login")
        with pytest.raises(NotFound):
            await issuers.delete_issuer(conn, a, "login")
        with pytest.raises(NotFound):
            await issuers.get_issuer(conn, a, "login")
    async with engine.connect() as conn:
        assert await access.origins(conn) == {"https://s.example"}
