"""The proactive pipeline's batch statements on PostgreSQL: prepared, on dedicated connections.

The claim, the lease renewals before the provider calls and the group-committed write
run once per batch, not per refresh, but through SQLAlchemy each still cost its statement
construction, compilation, result processing and a pool checkout with a transaction's
BEGIN/COMMIT round trips. Here each is one statement (its own implicit transaction: a
single statement is atomic) on a few dedicated asyncpg connections (``store.pgconns``),
prepared once per connection by asyncpg's statement cache:

* the claim: ``WITH picked AS MATERIALIZED (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)
  UPDATE grants ... RETURNING`` every column of a ``GrantRecord`` (built positionally);
* the renewal: ``lease.renew_many``'s statement (each grant fenced on its generation,
  status and lease);
* the write: ``lease.write_tokens_many``'s fenced ``UPDATE ... FROM unnest(...)`` and the
  ``grant.refreshed`` audit rows of the grants it wrote, in ONE statement (a data-modifying
  CTE feeding the INSERT): the new generation and its audit row commit together, and the
  lease is dropped in the same write.

The fences are exactly those of ``refresh.lease`` (which keeps the SQLAlchemy statements
for SQLite and every single-grant path), and ``tests/contract/test_refresh_batch_store.py``
runs the same cases against both. Commits stay synchronous (unlike the token read's
connections): a stored generation must survive the database host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
import orjson
from sqlalchemy import JSON
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.errors import StoreUnavailable
from grantkeeper.refresh.lease import pg_array_type
from grantkeeper.store._rows import to_record
from grantkeeper.store.pgconns import PgConns
from grantkeeper.store.records import GrantRecord, IntegrationRecord
from grantkeeper.store.tables import grants, integrations

__all__ = ["PG_ERRORS", "PgBatch"]

#: what a statement on these connections raises when the database failed or refused it
PG_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

_COLS = tuple(GrantRecord.__dataclass_fields__)
_SCOPES = _COLS.index("scopes")
_EXTRA = _COLS.index("token_extra")
_NOW = "extract(epoch FROM clock_timestamp())"
_DUE = (
    "status = 'active' AND refresh_due_at IS NOT NULL AND refresh_due_at <= $1::float8 "
    "AND (retry_at IS NULL OR retry_at <= $1::float8) "
    f"AND (lease_until IS NULL OR lease_until < {_NOW})"
)
# column names are constants of the table definition; every value is a bind parameter
_CLAIM = (
    f"WITH picked AS MATERIALIZED (SELECT id FROM grants WHERE {_DUE} "  # noqa: S608
    "ORDER BY refresh_due_at LIMIT $2::int8 FOR UPDATE SKIP LOCKED) "
    f"UPDATE grants SET lease_owner = $3::text, lease_until = CAST({_NOW} AS float8) + $4::float8, "
    "refresh_due_at = $1::float8 + $4::float8 "
    f"WHERE id IN (SELECT id FROM picked) AND {_DUE} RETURNING {', '.join(_COLS)}"
)
_FREE_OR_OURS = (
    "(g.lease_owner IS NULL OR g.lease_owner = $1::text OR g.lease_until IS NULL "
    f"OR g.lease_until < {_NOW})"
)
_RENEW = (
    f"UPDATE grants AS g SET lease_owner = $1::text, lease_until = CAST({_NOW} AS float8) "  # noqa: S608
    "+ $2::float8 FROM unnest($3::text[], $4::int4[]) AS v(id, version) "
    "WHERE g.id = v.id AND g.version = v.version AND g.status = 'active' "
    f"AND {_FREE_OR_OURS} RETURNING g.id"
)
_INTEG_COLS = tuple(c.name for c in integrations.c)
_INTEG_JSON = frozenset(c.name for c in integrations.c if isinstance(c.type, JSON))
_INTEGRATIONS = (
    f"SELECT {', '.join(_INTEG_COLS)} FROM integrations "  # noqa: S608
    "WHERE (environment_id, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
#: ``grant.refreshed``'s detail, serialised like the SQLAlchemy JSON type does (json.dumps)
_DETAIL = {
    rotated: json.dumps({"trigger": "proactive", "rotated": rotated}) for rotated in (False, True)
}

#: (grant_id, seen_version, values, now, rotated)
WriteRow = tuple[str, int, dict[str, Any], float, bool]


def _write_sql(cols: tuple[str, ...]) -> str:
    """The fenced write of one column set, and the audit rows of what it wrote."""
    args = ["$2::text[]", "$3::int4[]", "$4::float8[]", "$5::text[]"]
    names = ["id", "seen_version", "at", "detail"]
    sets = []
    for i, c in enumerate(cols):
        args.append(f"${i + 6}::{pg_array_type(c)}[]")
        names.append(f"c{i}")
        json_col = isinstance(grants.c[c].type, JSON)
        sets.append(f"{c} = v.c{i}::json" if json_col else f"{c} = v.c{i}")
    return (
        f"WITH w AS (UPDATE grants AS g SET {', '.join(sets)}, "  # noqa: S608
        "version = g.version + 1, lease_owner = NULL, lease_until = NULL "
        f"FROM unnest({', '.join(args)}) AS v({', '.join(names)}) "
        "WHERE g.id = v.id AND g.version = v.seen_version AND g.status = 'active' "
        f"AND {_FREE_OR_OURS} "
        "RETURNING g.id, g.environment_id, g.integration_id, v.at, v.detail) "
        "INSERT INTO audit_events (environment_id, at, actor, action, grant_id, integration_id, "
        "detail) SELECT environment_id, at, 'system', 'grant.refreshed', id, integration_id, "
        "detail::json FROM w RETURNING grant_id"
    )


def _record(row: asyncpg.Record) -> GrantRecord:
    v = list(row)
    scopes = orjson.loads(v[_SCOPES])
    v[_SCOPES] = tuple(scopes) if isinstance(scopes, list) else ()
    v[_EXTRA] = orjson.loads(v[_EXTRA]) if v[_EXTRA] is not None else {}
    return GrantRecord(*v)


def _integration(row: asyncpg.Record) -> IntegrationRecord:
    """As ``store.integrations.get`` reads it (JSON columns decoded as the SQLAlchemy type
    does, lists as tuples where the record wants them)."""
    values = {
        c: (json.loads(v) if c in _INTEG_JSON and v is not None else v)
        for c, v in zip(_INTEG_COLS, row, strict=True)
    }
    return to_record(IntegrationRecord, cast(Any, values))


class PgBatch:
    """A few dedicated connections for the pipeline's batch statements."""

    def __init__(self, kwargs: dict[str, Any], size: int = 3, timeout: float = 10.0) -> None:
        self._kwargs = kwargs
        self._timeout = timeout
        self.conns = PgConns(self._connect, size, timeout)
        self._write_sqls: dict[tuple[str, ...], str] = {}

    @classmethod
    def for_engine(cls, engine: AsyncEngine, size: int = 3, timeout: float = 10.0) -> PgBatch:
        """Connect exactly as the engine does (host, port, user, database, ssl, options)."""
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        for k in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            kwargs.pop(k, None)
        return cls(dict(kwargs), size, timeout)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self._kwargs, timeout=self._timeout)

    async def close(self) -> None:
        await self.conns.close()

    async def claim(self, owner: str, now: float, seconds: float, limit: int) -> list[GrantRecord]:
        """``lease.claim_due_records``: lease up to ``limit`` due grants, returned whole."""
        # never retried: a claim lost mid-statement may have leased rows (they fall due
        # again when the lease runs out)
        rows = await self.conns.run(
            lambda c: c.fetch(_CLAIM, now, limit, owner, seconds), retry=False
        )
        return [_record(r) for r in rows]

    async def renew_many(
        self, owner: str, seconds: float, rows: Sequence[tuple[str, int]]
    ) -> set[str]:
        """``lease.renew_many``: the ids whose leases were renewed."""
        if not rows:
            return set()
        ids = [gid for gid, _ in rows]
        versions = [v for _, v in rows]
        got = await self.conns.run(
            lambda c: c.fetch(_RENEW, owner, seconds, ids, versions), retry=False
        )
        return {r[0] for r in got}

    async def write_many(self, owner: str, rows: Sequence[WriteRow]) -> set[str]:
        """``lease.write_tokens_many`` plus one ``grant.refreshed`` audit row per grant
        written, in one statement; rows must share their value columns. The ids written."""
        if not rows:
            return set()
        cols = tuple(sorted(rows[0][2]))
        if any(tuple(sorted(r[2])) != cols for r in rows):
            raise ValueError("write_many: every row must set the same columns")
        sql = self._write_sqls.get(cols)
        if sql is None:
            sql = self._write_sqls[cols] = _write_sql(cols)
        args: list[Any] = [
            owner,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[3] for r in rows],
            [_DETAIL[r[4]] for r in rows],
        ]
        for c in cols:
            if isinstance(grants.c[c].type, JSON):
                args.append([json.dumps(r[2][c]) for r in rows])
            else:
                args.append([r[2][c] for r in rows])
        got = await self.conns.run(lambda c: c.fetch(sql, *args), retry=False)
        return {r[0] for r in got}

    async def integrations(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], IntegrationRecord]:
        """The integrations of ``[(environment_id, integration_id)]`` that exist, in one read."""
        if not keys:
            return {}
        envs = [e for e, _ in keys]
        ids = [i for _, i in keys]
        rows = await self.conns.run(lambda c: c.fetch(_INTEGRATIONS, envs, ids), retry=True)
        out = {}
        for row in rows:
            rec = _integration(row)
            out[(rec.environment_id, rec.id)] = rec
        return out
