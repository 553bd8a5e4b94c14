"""The proactive refresh pipeline of one worker process.

1. Claim: one statement leases a batch of due grants and returns them whole
   (``lease.claim_due_records``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL); the claim
   moves ``refresh_due_at`` past the lease, so leased rows leave the head of the due index.
2. Call: each grant's provider call runs as soon as one of the provider host's slots is
   free (``refresh.slots``: a concurrency cap shared by every worker, in the database),
   over the lean keep-alive HTTP/1.1 client (``oauth.http1``). Claims continue while
   calls are in flight, so the pipeline stays full.
3. Write: successes are written by one group-committing writer: a lone result is written
   at once, under load the results that arrived during the previous write go together
   (``lease.write_tokens_many``: fenced per grant on version, status and our lease; one
   ``grant.refreshed`` audit row per refresh, in the same transaction).

Leases between claim and write: right before its call a grant's lease is renewed, fenced on
its generation, by the group-committing ``_Renewer`` (one statement for all the grants
starting their calls), unless its claim is younger than ``engine.fresh_claim_seconds``
(timed from before the claim was sent: its lease cannot have run out) and its provider slot
was not taken from the database while it waited. While calls and writes are in flight one
``_Keeper`` renews all their leases in one statement every third of a lease term. On
PostgreSQL the claim, the renewals, the integrations read and the write (with its audit
rows, one statement) are prepared statements on dedicated connections (``refresh.pgbatch``).

Anything off the common path (minting kinds, an integration in backoff, a write whose
fence did not match, a database error) goes through ``refresh.engine``'s single-grant
logic with the same lease owner, so the failure handling is the engine's. Correctness
never rests on this process's memory: leases, fences and slots are all in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from grantkeeper.errors import (
    GrantkeeperError,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
    RefreshBusy,
)
from grantkeeper.grants import open_token
from grantkeeper.integrations import ResolvedIntegration, resolve
from grantkeeper.oauth.tokens import OAuthErrorResponse, TokenSet, token_request
from grantkeeper.providers.catalog import MINTING_MODES
from grantkeeper.providers.quirks import apply_refresh_request, apply_token_response
from grantkeeper.refresh import engine, lease
from grantkeeper.refresh.pgbatch import PG_ERRORS, PgBatch
from grantkeeper.refresh.slots import ProviderSlots
from grantkeeper.runtime import Runtime
from grantkeeper.store import audit as audit_store
from grantkeeper.store import grants as grant_store
from grantkeeper.store import integrations as integration_store
from grantkeeper.store.db import reading
from grantkeeper.store.records import GrantRecord, IntegrationRecord
from grantkeeper.store.unavailable import DB_ERRORS

__all__ = ["run_proactive"]

log = logging.getLogger(__name__)

#: most results one group commit writes
WRITE_BATCH = 500

_T = TypeVar("_T")


@dataclass(slots=True)
class _Done:
    rec: GrantRecord
    values: dict[str, Any]
    rotated: bool
    now: float


class _GroupCommit(ABC, Generic[_T]):
    """One statement (one transaction) for many waiters, never waiting for a timer: a lone
    item is written at once, under load the items that arrived during the previous round
    trip go together. ``_flush`` returns the ids it did, or None when the database failed."""

    def __init__(self, rt: Runtime, owner: str, pg: PgBatch | None) -> None:
        self._rt = rt
        self._owner = owner
        #: PostgreSQL: the prepared batch statements on dedicated connections
        self._pg = pg
        self._queue: list[tuple[_T, str, asyncio.Future[bool | None]]] = []
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _submit(self, item: _T, key: str) -> bool | None:
        fut: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, key, fut))
        self._wake.set()
        # a caller cancelled meanwhile cancels only its own future: its item is still
        # written, and the answer is dropped
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:WRITE_BATCH], self._queue[WRITE_BATCH:]
                try:
                    done = await self._flush([item for item, _, _ in batch])
                except Exception as exc:  # noqa: BLE001 - never leave the waiters hanging
                    log.error("batched refresh statement failed: %s", type(exc).__name__)
                    done = None
                for _, key, fut in batch:
                    if not fut.done():
                        fut.set_result(None if done is None else key in done)

    @abstractmethod
    async def _flush(self, batch: list[_T]) -> set[str] | None:
        """Write ``batch`` in one statement: the keys done, None if the database failed."""

    async def close(self) -> None:
        # called once every waiter has its answer: nothing is queued or being written
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _Renewer(_GroupCommit[GrantRecord]):
    """Renewals of claimed leases right before their provider calls, many per statement;
    each fenced on its own generation, status and lease (``lease.renew_many``)."""

    async def renew(self, rec: GrantRecord) -> bool | None:
        """As ``engine.renew_lease``: False when another owner holds the grant, it left
        ``active`` or moved past ``rec.version``; None when the database did not answer."""
        return await self._submit(rec, rec.id)

    async def renew_now(self, recs: list[GrantRecord]) -> set[str] | None:
        """Renew these at once (no queue): the ids renewed, None if the database failed."""
        return await self._flush(recs)

    async def _flush(self, batch: list[GrantRecord]) -> set[str] | None:
        rows = [(r.id, r.version) for r in batch]
        seconds = engine.lease_budget(self._rt)
        try:
            if self._pg is not None:
                return await self._pg.renew_many(self._owner, seconds, rows)
            async with self._rt.engine.begin() as conn:
                return await lease.renew_many(conn, self._owner, seconds, rows)
        except (*DB_ERRORS, *PG_ERRORS) as exc:
            log.warning("batched lease renewal failed (%s)", type(exc).__name__)
            return None


class _Keeper:
    """Keeps the leases of the grants at a provider or waiting for their write renewed
    (``engine.keep_leased``'s cadence: every third of a lease term), with one batched,
    fenced renewal of all of them per tick instead of a timer task per grant. A grant
    registered just after a tick is renewed one interval after it was renewed before its
    call, as the per-grant heartbeat did; one whose renewal is refused (another owner, or
    a newer generation stored: the write came first) is dropped, never re-taken."""

    def __init__(self, renewer: _Renewer, interval: float) -> None:
        self._renewer = renewer
        self._interval = interval
        self._held: dict[str, GrantRecord] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, rec: GrantRecord) -> None:
        self._held[rec.id] = rec
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def let_go(self, rec: GrantRecord) -> None:
        if self._held.get(rec.id) is rec:
            del self._held[rec.id]

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(self._interval)
            recs = list(self._held.values())
            for i in range(0, len(recs), WRITE_BATCH):
                chunk = recs[i : i + WRITE_BATCH]
                ours = await self._renewer.renew_now(chunk)
                if ours is None:
                    continue  # the database did not answer: the write will tell
                for rec in chunk:
                    if rec.id not in ours and self._held.get(rec.id) is rec:
                        log.warning(
                            "grant %s: the refresh lease is no longer ours to renew", rec.id
                        )
                        del self._held[rec.id]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class _Writer(_GroupCommit[_Done]):
    """Group commit of refresh results: one transaction per batch."""

    async def write(self, done: _Done) -> bool:
        """True once committed; False when the fence did not match or the database failed
        (the caller then takes the engine's retrying, re-reading persist path)."""
        return bool(await self._submit(done, done.rec.id))

    async def _flush(self, batch: list[_Done]) -> set[str]:
        # rows must share their columns: group by the column set
        groups: dict[tuple[str, ...], list[_Done]] = {}
        for d in batch:
            groups.setdefault(tuple(sorted(d.values)), []).append(d)
        try:
            if self._pg is not None:
                # each group is one statement: the fenced write and its audit rows
                written: set[str] = set()
                for rows in groups.values():
                    written |= await self._pg.write_many(
                        self._owner,
                        [(d.rec.id, d.rec.version, d.values, d.now, d.rotated) for d in rows],
                    )
                return written
            async with self._rt.engine.begin() as conn:
                written = set()
                for rows in groups.values():
                    written |= await lease.write_tokens_many(
                        conn, self._owner, [(d.rec.id, d.rec.version, d.values) for d in rows]
                    )
                await audit_store.append_many(
                    conn,
                    [
                        {
                            "environment_id": d.rec.environment_id,
                            "actor": "system",
                            "action": "grant.refreshed",
                            "now": d.now,
                            "grant_id": d.rec.id,
                            "integration_id": d.rec.integration_id,
                            "detail": {"trigger": "proactive", "rotated": d.rotated},
                        }
                        for d in batch
                        if d.rec.id in written
                    ],
                )
            return written
        except (*DB_ERRORS, *PG_ERRORS) as exc:
            log.warning("batched refresh write failed (%s); writing one by one", type(exc).__name__)
            return set()


def _host(url: str) -> str:
    """The slot key: one concurrency cap per provider host."""
    return (urlsplit(url).netloc or url)[:63]


class _Pipeline:
    def __init__(self, rt: Runtime, owner: str) -> None:
        s = rt.settings
        self.rt = rt
        self.owner = owner
        self.budget = engine.lease_budget(rt)
        #: the time a call and every persist retry need from its start
        self.call_budget = s.http_timeout + sum(engine.PERSIST_DELAYS) + 2.0
        #: a claim this young whose grant did not wait for a slot or a call goes to the
        #: provider without a renewal: its lease still has the call's whole budget (and
        #: two thirds of a term for the keeper's first renewal); the on-demand path's rule
        self.fresh_for = engine.fresh_claim_seconds(rt)
        self.slots = ProviderSlots(
            rt.engine,
            owner,
            count=s.worker_provider_concurrency,
            seconds=max(30.0, 3 * s.http_timeout),
            call_budget=s.http_timeout + 1.0,
        )
        self.pg = PgBatch.for_engine(rt.engine) if rt.engine.dialect.name == "postgresql" else None
        self.writer = _Writer(rt, owner, self.pg)
        self.renewer = _Renewer(rt, owner, self.pg)
        self.keeper = _Keeper(self.renewer, max(0.5, self.budget / 3))
        self.calls = asyncio.Semaphore(s.worker_concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.room = asyncio.Event()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        #: grants in flight at or below which the next batch is claimed
        self.low = s.worker_batch - s.worker_batch // 2

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set, not per refresh."""
        found = self._children.get((metric, labels))
        if found is None:
            found = self._children[(metric, labels)] = metric.labels(*labels)
        return found

    async def claim(self, limit: int) -> list[GrantRecord]:
        now = self.rt.clock.now()
        if self.pg is not None:
            return await self.pg.claim(self.owner, now, self.budget, limit)
        async with self.rt.engine.begin() as conn:
            return await lease.claim_due_records(conn, self.owner, now, self.budget, limit)

    async def integrations(
        self, recs: list[GrantRecord]
    ) -> dict[tuple[str, str], IntegrationRecord | None]:
        keys = {(r.environment_id, r.integration_id) for r in recs}
        out: dict[tuple[str, str], IntegrationRecord | None] = {}
        if self.pg is not None:
            found = await self.pg.integrations(sorted(keys))
            return {k: found.get(k) for k in keys}
        async with reading(self.rt.engine) as conn:
            for env, iid in keys:
                out[(env, iid)] = await integration_store.get(conn, env, iid)
        return out

    def start(
        self,
        rec: GrantRecord,
        integ: IntegrationRecord | None,
        resolved: dict[tuple[str, str], ResolvedIntegration | None],
        claimed: float,
    ) -> None:
        """``claimed``: the monotonic time just before the claim statement was sent (the
        lease runs at least ``budget`` seconds from then)."""
        task = asyncio.ensure_future(self.one(rec, integ, resolved, claimed))
        self.tasks.add(task)
        # shutdown's drain waits for these like for any refresh in flight (a distinct key:
        # on-demand callers coalesce on the grant id; they meet this one at the lease)
        key = f"proactive:{rec.id}"
        self.rt.inflight[key] = task

        def _done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if self.rt.inflight.get(key) is t:
                del self.rt.inflight[key]
            if len(self.tasks) <= self.low:
                self.room.set()  # room for the next claim (not a wake-up per refresh)

        task.add_done_callback(_done)

    async def give_back(self, rec: GrantRecord) -> None:
        with contextlib.suppress(*DB_ERRORS):
            async with self.rt.engine.begin() as conn:
                await lease.release_claimed(conn, [rec.id], self.owner, self.rt.clock.now())

    async def one(
        self,
        rec: GrantRecord,
        integ: IntegrationRecord | None,
        resolved: dict[tuple[str, str], ResolvedIntegration | None],
        claimed: float,
    ) -> None:
        rt = self.rt
        started = False
        try:
            if rt.draining:
                await self.give_back(rec)  # never sent to a provider
                return
            now = rt.clock.now()
            spec = rt.catalog.get(rec.provider) if rec.provider in rt.catalog else None
            simple = (
                integ is not None
                and spec is not None
                and spec.auth_mode not in MINTING_MODES
                and rec.refresh_token_ct is not None
                and not (integ.failure_code is not None and (integ.retry_at or 0) > now)
            )
            key = (rec.environment_id, rec.integration_id)
            if simple and key not in resolved:
                assert integ is not None
                try:
                    resolved[key] = await resolve(rt, integ)
                except GrantkeeperError:
                    resolved[key] = None
            res = resolved.get(key) if simple else None
            if res is None:
                # the engine's single-grant path (it re-takes our lease as its owner)
                started = True
                await engine.refresh(
                    rt,
                    rec.environment_id,
                    rec.id,
                    seen_version=rec.version,
                    trigger="proactive",
                    lease_owner=self.owner,
                )
                return
            assert integ is not None
            wait = self.budget - self.call_budget - (time.monotonic() - claimed)
            progress = engine.Progress()
            try:
                host = _host(res.token_url)
                try:
                    async with self.calls, self.slots.slot(host, max(wait, 0.0)) as held:
                        if rt.draining:
                            await self.give_back(rec)
                            return
                        # the claim's lease may have run out while this grant waited for
                        # a slot on a loaded machine: another process may be presenting this
                        # refresh token right now, or may have spent it and stored the next
                        # generation already; the renewal is fenced on both. Only a claim
                        # young enough (in time measured from before the claim was sent)
                        # skips it: its lease cannot have run out, so nobody else can have
                        # taken the grant. A grant whose slot had to be taken from the
                        # database (other processes may have held every one) renews anyway
                        fresh = (
                            not held.from_database and time.monotonic() - claimed <= self.fresh_for
                        )
                        if not fresh and await self.renewer.renew(rec) is False:
                            log.info(
                                "grant %s: the claim ran out and another process has the "
                                "grant or refreshed it; giving it up",
                                rec.id,
                            )
                            return
                        started = True
                        progress.unknown = True
                        # kept leased until the new generation is stored: an answer or a
                        # batched write may take longer than one lease term
                        self.keeper.hold(rec)
                        try:
                            # the slot covers the provider call only, not the write
                            fetched = await self.fetch(rec, integ, res, progress)
                        except BaseException:
                            self.keeper.let_go(rec)
                            raise
                    try:
                        if fetched is not None:
                            await self.store(rec, integ, res, fetched, progress)
                    finally:
                        self.keeper.let_go(rec)
                except RefreshBusy:
                    if not started:
                        await self.give_back(rec)  # no slot in time: due again at once
                        return
                    raise
            finally:
                if started:
                    if progress.unknown:
                        log.warning("grant %s: refresh outcome unknown; keeping the lease", rec.id)
                    elif not progress.released:
                        await asyncio.shield(engine.release_lease(rt, rec, self.owner))
        except GrantkeeperError as exc:
            log.info("proactive refresh of grant %s: %s", rec.id, exc.code)
        except asyncio.CancelledError:
            if not started:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.give_back(rec))
            raise
        except Exception as exc:  # noqa: BLE001 - one grant must not stop the pipeline
            log.error("proactive refresh of grant %s failed: %s", rec.id, type(exc).__name__)

    async def fetch(
        self,
        rec: GrantRecord,
        integ: IntegrationRecord,
        res: ResolvedIntegration,
        progress: engine.Progress,
    ) -> tuple[TokenSet, str] | None:
        """The provider call, and the engine's failure classes with its helpers (same
        events, audit rows and backoff). None: handled (the grant went invalid)."""
        rt = self.rt
        spec = res.spec
        refresh_token = open_token(rt.vault, rec, "refresh_token")
        assert refresh_token is not None
        params = apply_refresh_request(
            spec, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        if res.resource:
            params["resource"] = res.resource  # RFC 8707: the token stays bound to it
        metrics = rt.metrics
        owner = self.owner

        async def once() -> TokenSet:
            started = time.monotonic()
            try:
                return await token_request(
                    rt.token_http,
                    res.token_url,
                    res.client,
                    params,
                    timeout=rt.settings.http_timeout,
                    normalise=lambda body: apply_token_response(spec, body),
                )
            finally:
                self.child(metrics.refresh_seconds, spec.name).observe(time.monotonic() - started)

        try:
            try:
                tokens = await once()
            except ProviderOutcomeUnknown as exc:
                metrics.refreshes.labels(spec.name, "unknown", "proactive").inc()
                log.warning(
                    "grant %s: refresh outcome unknown (%s); presenting it again",
                    rec.id,
                    exc.detail,
                )
                tokens = await once()
        except ProviderOutcomeUnknown as exc:
            metrics.refreshes.labels(spec.name, "unknown", "proactive").inc()
            log.error("grant %s: refresh outcome unknown twice; the lease is kept", rec.id)
            await engine.record_failure(
                rt, rec, owner, "outcome_unknown", exc.detail, exc.retry_after, keep_lease=True
            )
            raise
        except ProviderUnavailable as exc:
            progress.unknown = False
            metrics.refreshes.labels(spec.name, "transient", "proactive").inc()
            await engine.record_failure(
                rt, rec, owner, "provider_unavailable", exc.detail, exc.retry_after
            )
            raise
        except OAuthErrorResponse as exc:
            progress.unknown = False
            if exc.kind == "grant":
                metrics.refreshes.labels(spec.name, "invalid", "proactive").inc()
                await engine.mark_invalid(rt, rec, owner, exc, progress)
                return None
            if exc.kind == "integration":
                metrics.refreshes.labels(spec.name, "misconfigured", "proactive").inc()
                raise await engine.integration_failed(rt, rec, owner, integ, exc) from None
            metrics.refreshes.labels(spec.name, "rejected", "proactive").inc()
            await engine.record_failure(rt, rec, owner, exc.error, exc.description, None)
            raise ProviderRejected(f"the provider rejected the refresh ({exc.error})") from None
        self.child(metrics.refreshes, spec.name, "success", "proactive").inc()
        return tokens, refresh_token

    async def store(
        self,
        rec: GrantRecord,
        integ: IntegrationRecord,
        res: ResolvedIntegration,
        fetched: tuple[TokenSet, str],
        progress: engine.Progress,
    ) -> None:
        """Durable first: the new generation through the group-committing writer."""
        rt = self.rt
        tokens, refresh_token = fetched
        now = rt.clock.now()
        refreshed = engine.refreshed_columns(rt, res.spec, rec, tokens, refresh_token, now=now)
        if not await self.writer.write(_Done(rec, refreshed.values, refreshed.rotated, now)):
            # fence missed or the database failed: the engine re-reads, retries, waits for
            # another lease holder, revokes tokens minted for a grant deleted meanwhile
            await engine.persist_refreshed(
                rt, rec, self.owner, tokens, refresh_token, "proactive", res
            )
        progress.unknown = False
        progress.released = True
        if integ.failure_code is not None:
            await engine.integration_recovered(rt, integ)


async def run_proactive(rt: Runtime, stop: asyncio.Event) -> None:
    """Claim, call and write until ``stop``; then let what is in flight finish."""
    s = rt.settings
    p = _Pipeline(rt, f"{rt.instance_id}:proactive")
    last_lag = 0.0
    try:
        while not stop.is_set() and not rt.draining:
            room = s.worker_batch - len(p.tasks)
            if len(p.tasks) > p.low:
                # keep the pipeline full but claim in batches, not one by one
                p.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.room.wait(), timeout=s.worker_interval)
                continue
            claimed: list[GrantRecord] = []
            sent = time.monotonic()
            try:
                claimed = await p.claim(room)
                integs = await p.integrations(claimed) if claimed else {}
            except Exception as exc:  # noqa: BLE001 - the next pass retries
                log.error("worker refresh claim failed: %s", type(exc).__name__)
                integs = {}
                if claimed:
                    # claimed but not readable: leases expire and the grants fall due again
                    claimed = []
            resolved: dict[tuple[str, str], ResolvedIntegration | None] = {}
            for rec in claimed:
                p.start(rec, integs.get((rec.environment_id, rec.integration_id)), resolved, sent)
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                with contextlib.suppress(*DB_ERRORS):
                    async with reading(rt.engine) as conn:
                        oldest = await grant_store.oldest_due(conn)
                    rt.metrics.due_lag.set(
                        max(rt.clock.now() - oldest, 0.0) if oldest is not None else 0.0
                    )
            if len(claimed) < room:
                # nothing more due right now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=s.worker_interval)
    finally:
        if p.tasks:
            await asyncio.gather(*list(p.tasks), return_exceptions=True)
        await p.writer.close()
        await p.keeper.close()
        await p.renewer.close()
        await p.slots.close()
        if p.pg is not None:
            await p.pg.close()
