"""The token read's lean PostgreSQL path: raw asyncpg, prepared statements, a small pool.

``POST /v1/grants/{id}/token`` is on the hot path of every API call an app makes,
so on PostgreSQL it skips SQLAlchemy (statement compilation, result processing,
pool bookkeeping and its rollback-on-return cost more than the query):

* one round trip reads the API key row and the grant row together (a LEFT JOIN
  on the key's own environment: a grant of another environment never comes back);
* the audit row is one prepared ``INSERT`` (its own implicit transaction,
  committed before the caller gets the token: "audited before the secret leaves");
* these connections run with ``synchronous_commit = off``. The INSERT is still
  committed, visible and ordered before the response; what is given up is only the
  wait for its WAL flush to disk (about 3.5 ms here, which with a pool of 4 would
  cap token reads near 1,100/s). If the database *host* crashes, the ``token.issued``
  rows of at most the last ~0.6 s (3 x ``wal_writer_delay``) can be lost; the
  database stays consistent (this is not ``fsync = off``), an application crash
  loses nothing, and no other write uses these connections: refreshes, grant
  changes and every other audit event keep fully synchronous commits (and each of
  those flushes the earlier asynchronous commits with it);
* ``db_pool_size`` dedicated asyncpg connections behind a free list (``store.pgconns``; a
  small set beats a large one on few cores, and asyncpg's Pool cost more than the query):
  the statements below are single autocommit statements that leave no session state;
* the read (``read_token``) selects only the columns the answer needs: the
  key's, and of the grant what serving its token or deciding to refresh it first needs
  (status, expiry, scopes, version, access-token ciphertext, whether there is a refresh
  token, backoff and failure): never the refresh token, which only a refresh reads,
  under its lease;
* reads are grouped the same way (``store.groupread``): a read that finds a connection
  free runs at once as one prepared statement; reads that arrive while the others are
  busy go together in the next statement (``unnest`` of key and grant ids), and callers
  asking for the same key and grant at the same moment share one row. No read is ever
  older than its caller's request, and nothing is kept between reads;
* ``token.issued`` rows are group-committed, adaptively: a row that arrives while no
  write is in flight is written at once (a lone request pays no wait), rows that
  arrive while one is in flight are written together by the next multi-row INSERT.
  Every response still waits for the commit of the batch that holds its row, so
  "audited before the secret leaves" holds row by row; under load one INSERT serves
  many requests instead of one each.

asyncpg prepares each statement once per connection and caches it. Everything
else (refresh, leases, every other route) keeps using the SQLAlchemy engine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, NamedTuple

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.store.groupread import GroupRead
from grantkeeper.store.pgconns import PgConns
from grantkeeper.store.records import ApiKeyRecord

__all__ = ["HotPath", "TokenRow"]

_KEY_COLS = (
    "id", "environment_id", "name", "secret_hash", "scopes", "integration_ids",
    "created_at", "revoked_at", "last_used_at",
)  # fmt: skip
_NK = len(_KEY_COLS)

# column names are constants; every value is a bind parameter
#: what serving a token, or deciding to refresh it first, reads of the grant (``TokenRow``):
#: never the refresh token itself, only whether there is one
_TOKEN_COLS = (
    "g.id", "g.integration_id", "g.provider", "g.status", "g.token_type", "g.scopes",
    "g.access_token_ct", "g.access_token_expires_at", "g.version",
    "g.refresh_token_ct IS NOT NULL", "g.last_refreshed_at", "g.retry_at", "g.failure_code",
    "g.failure_description", "g.failed_at",
)  # fmt: skip
#: the key's columns and the grant's, in ``TokenRow``'s order
_COLUMNS = ", ".join(f"k.{c}" for c in _KEY_COLS) + ", " + ", ".join(_TOKEN_COLS)
_READ_TOKEN = (
    f"SELECT {_COLUMNS}"  # noqa: S608
    " FROM api_keys k LEFT JOIN grants g ON g.id = $2 AND g.environment_id = k.environment_id"
    " WHERE k.id = $1"
)
# the "many" form (``store.groupread``): one row per (key id, grant id) pair that has a key,
# numbered by its position in the arrays
_READ_TOKEN_MANY = (
    f"SELECT q.n, {_COLUMNS}"  # noqa: S608
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(kid, gid, n)"
    " JOIN api_keys k ON k.id = q.kid"
    " LEFT JOIN grants g ON g.id = q.gid AND g.environment_id = k.environment_id"
)
_AUDIT = (
    "INSERT INTO audit_events (environment_id, at, actor, action, grant_id, integration_id, detail)"
    " VALUES ($1, $2, $3, 'token.issued', $4, $5, $6)"
)
# one statement for a whole batch: arrays in, one row per element (in arrival order)
_AUDIT_MANY = (
    "INSERT INTO audit_events (environment_id, at, actor, action, grant_id, integration_id, detail)"
    " SELECT e, t, a, 'token.issued', g, i, d::json FROM unnest("
    "$1::text[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::text[]"
    ") AS u(e, t, a, g, i, d)"
)
#: the largest batch one INSERT carries (more waits for the next one)
_MAX_BATCH = 512

_Row = tuple[str, float, str, str, str, str]
_Pair = tuple[str, "str | None"]
_KeyToken = tuple["ApiKeyRecord | None", "TokenRow | None"]


class TokenRow(NamedTuple):
    """The columns of a grant that serving its access token, or refreshing it first, needs
    (``refresh.engine.GrantState``)."""

    id: str
    environment_id: str
    integration_id: str
    provider: str
    status: str
    token_type: str
    scopes: tuple[str, ...]
    access_token_ct: bytes | None
    access_token_expires_at: float | None
    version: int
    has_refresh_token: bool
    last_refreshed_at: float | None
    retry_at: float | None
    failure_code: str | None
    failure_description: str | None
    failed_at: float | None


def _tuple(v: str | None) -> tuple[str, ...] | None:
    """A JSON list column as a tuple; SQL NULL and JSON ``null`` are both None (as via SQLAlchemy)."""
    items = orjson.loads(v) if v is not None else None
    return tuple(items) if isinstance(items, list) else None


class HotPath:
    """The token read's dedicated connections (PostgreSQL only)."""

    def __init__(self, dsn_kwargs: dict[str, Any], size: int, timeout: float = 5.0) -> None:
        self._kwargs = dsn_kwargs
        self._timeout = timeout
        self.conns = PgConns(self._connect, size, timeout)
        # reads run on all connections but one, which stays for the audit writer
        lanes = max(1, size - 1)
        self._token_reads: GroupRead[_Pair, _KeyToken] = GroupRead(
            self._read_token_one, self._read_token_many, lanes
        )
        # rows waiting for the next audit write, and whether a write is in flight
        self._pending: list[tuple[_Row, asyncio.Future[None]]] = []
        self._writing = False
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def for_engine(cls, engine: AsyncEngine, size: int, timeout: float = 5.0) -> HotPath:
        """Connect exactly as the engine does (host, port, user, database, ssl, options)."""
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        for k in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            kwargs.pop(k, None)
        return cls(dict(kwargs), size, timeout)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            **self._kwargs,
            timeout=self._timeout,
            server_settings={
                **self._kwargs.get("server_settings", {}),
                "synchronous_commit": "off",
            },
        )

    async def close(self) -> None:
        await self._token_reads.close()
        await self.conns.close()

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        # a read is safe to run twice: on a lost connection it is retried on a fresh one
        return await self.conns.run(lambda c: c.fetchrow(sql, *args), retry=True)

    async def _fetch_many(self, sql: str, pairs: list[_Pair]) -> list[tuple[Any, ...] | None]:
        """Rows of a "many" statement, one per pair in order (None: no such key)."""
        kids = [p[0] for p in pairs]
        gids = [p[1] for p in pairs]
        rows = await self.conns.run(lambda c: c.fetch(sql, kids, gids), retry=True)
        out: list[tuple[Any, ...] | None] = [None] * len(pairs)
        for r in rows:
            v = tuple(r)
            out[v[0] - 1] = v[1:]
        return out

    @staticmethod
    def _key(v: tuple[Any, ...]) -> ApiKeyRecord:
        return ApiKeyRecord(
            id=v[0],
            environment_id=v[1],
            name=v[2],
            secret_hash=v[3],
            scopes=_tuple(v[4]) or (),
            integration_ids=_tuple(v[5]),
            created_at=v[6],
            revoked_at=v[7],
            last_used_at=v[8],
        )

    async def read_token(
        self, key_id: str, grant_id: str | None
    ) -> tuple[ApiKeyRecord | None, TokenRow | None]:
        """The key (if it exists) and what serving the grant's token needs (if the grant
        exists in the key's environment)."""
        return await self._token_reads.get((key_id, grant_id))

    async def _read_token_one(self, pair: _Pair) -> _KeyToken:
        row = await self._fetchrow(_READ_TOKEN, *pair)
        return self._token_pair(tuple(row)) if row is not None else (None, None)

    async def _read_token_many(self, pairs: list[_Pair]) -> list[_KeyToken]:
        rows = await self._fetch_many(_READ_TOKEN_MANY, pairs)
        return [self._token_pair(v) if v is not None else (None, None) for v in rows]

    def _token_pair(self, v: tuple[Any, ...]) -> _KeyToken:
        key = self._key(v)
        if v[_NK] is None:
            return key, None
        return key, TokenRow(
            v[_NK], v[1], v[_NK + 1], v[_NK + 2], v[_NK + 3], v[_NK + 4],
            _tuple(v[_NK + 5]) or (), v[_NK + 6], v[_NK + 7], v[_NK + 8],
            v[_NK + 9], v[_NK + 10], v[_NK + 11], v[_NK + 12], v[_NK + 13], v[_NK + 14],
        )  # fmt: skip

    async def audit_issued(
        self,
        *,
        environment_id: str,
        actor: str,
        now: float,
        grant_id: str,
        integration_id: str,
        generation: int,
    ) -> None:
        """The ``token.issued`` event, committed before returning (no secret in ``detail``).

        ``detail`` is serialised like the SQLAlchemy JSON type does it (``json.dumps``).
        """
        row: _Row = (
            environment_id, now, actor, grant_id, integration_id,
            json.dumps({"generation": generation}),
        )  # fmt: skip
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        if not self._writing:
            self._writing = True
            # the writer is its own task: a caller that goes away (cancelled) never takes
            # other callers' rows down with it
            self._writer = asyncio.get_running_loop().create_task(self._write_batches())
        # a caller cancelled here only cancels its own future: its row is still written,
        # and the writer skips futures that are already done
        await done

    async def _write_batches(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                try:
                    await self._insert([r for r, _ in batch])
                except BaseException as exc:  # every waiter of this batch learns of it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._writing = False
            # cancelled (shutdown): nobody may wait for a write that will not come
            for _, fut in self._pending:
                if not fut.done():
                    fut.set_exception(ConnectionError("the audit writer stopped"))
            self._pending.clear()

    async def _insert(self, rows: list[_Row]) -> None:
        # never retried: a connection lost mid-INSERT may or may not have committed the rows
        if len(rows) == 1:
            await self.conns.run(lambda c: c.execute(_AUDIT, *rows[0]), retry=False)
        else:
            cols = [list(c) for c in zip(*rows, strict=True)]
            await self.conns.run(lambda c: c.execute(_AUDIT_MANY, *cols), retry=False)
