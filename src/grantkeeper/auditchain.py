"""The tamper-evident audit chain: each sealed event carries the hash of the one before.

Per environment, events are linked in the order the sealer seals them::

    hash = HMAC-SHA256(K, prev_hash || canonical_json(event))

with ``prev_hash`` the previous event's hash (64 zeros for the first) and ``K`` derived
from the vault (``Vault.derive_key(b"audit-chain")``), so someone who can write the
database but does not hold a master key cannot forge a consistent chain. Each sealed
event's position in its chain is ``chain_seq``.

**Sealed asynchronously, in seal order.** Requests only ``INSERT`` events (in the
transaction of the change they describe); linking them at insert time would serialise
every audited request, including every token handed out, across all processes. The
worker's sealer (:func:`seal`) links events afterwards and appends each one to the end
of its environment's chain. Ids are assigned at insert, not at commit: on PostgreSQL a
transaction holding id 10 may commit after id 11 was sealed, however long after. Such
an event is simply appended when it becomes visible; nothing depends on id order or on
application clocks, so no commit order can make the chain look tampered with. (An
earlier design linked in id order behind a 5-second horizon of application time, and a
slow transaction made ``audit verify`` fail without any tampering.) Environments' chains
are independent: on PostgreSQL a transaction-scoped advisory lock per environment lets
exactly one sealer link a given chain at a time while other workers seal other
environments; on SQLite the sealing transaction's ``BEGIN IMMEDIATE`` serialises them
all. Each pass re-reads the chain head and the unsealed events inside that lock.
:data:`SEAL_HORIZON` only batches work.

**What ``verify`` detects** (:func:`verify`, walking ``chain_seq`` order): an edited
event (its hash no longer matches; the hash covers the id), a deleted one (the next
event's ``prev_hash`` names an event that is gone), reordered ones (a ``prev_hash`` that
names another, existing event), an event whose seal was removed, and seals made with no
loaded key. It cannot detect the removal of the newest events on its own: record the head
it reports (``grantkeeper audit verify --json``) somewhere else to anchor the chain.
Events not sealed yet are reported as pending.

**Pruned chains** (:func:`prune`, the retention purge). Only the oldest sealed events go,
as a prefix of the chain, and only after the pruned part was checked link by link (a purge
never destroys the evidence of an edit). The environment's checkpoint keeps the position,
id and seal of the last pruned event and how many were pruned, MACed with the chain key.
``verify`` starts from it: the first remaining event must link to the checkpoint's seal, so
deleting it (or restoring an older checkpoint) is still reported as a deletion; a
checkpoint that was edited or forged, or an event placed at or before it, is reported as
``checkpoint``; deleting the checkpoint makes the remaining chain start at a link to an
event that is gone. The sealer goes on from the checkpoint when every event was pruned.

The chain key is derived from the keyring's derivation secret, a key of its own that
keeps its value through root and keyring rotation (``vault.manager``), so retiring an
old root key never breaks verification. A database moved over from before the keyring
takes the first local key as that secret, so its chain goes on unbroken; ``verify``
also tries every loaded local key, for links sealed under an older first key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from grantkeeper.store import audit as store
from grantkeeper.store import auditparts
from grantkeeper.store.db import reading
from grantkeeper.vault import Vault

__all__ = [
    "GENESIS",
    "SEAL_HORIZON",
    "BrokenLink",
    "ChainReport",
    "Sealer",
    "ChainVerifier",
    "canonical",
    "chain_keys",
    "checkpoint_mac",
    "link_hash",
    "prune",
    "prune_months",
    "seal",
    "verify",
]

log = logging.getLogger(__name__)

#: the prev_hash of an environment's first event
GENESIS = "0" * 64
#: only events at least this old (seconds) are sealed; see the module docstring
SEAL_HORIZON = 5.0
_PURPOSE = b"audit-chain"
_BATCH = 1000
#: seconds dropping a month waits for its exclusive lock (then the next pass tries again)
_DROP_LOCK_TIMEOUT = 2

_FIELDS = ("id", "environment_id", "at", "actor", "action", "grant_id", "integration_id", "detail")


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes an event's hash covers: its fields as sorted, compact JSON."""
    return orjson.dumps({k: row[k] for k in _FIELDS}, option=orjson.OPT_SORT_KEYS)


def link_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + canonical(row), hashlib.sha256).hexdigest()


def chain_keys(vault: Vault) -> list[tuple[str, bytes]]:
    """(label, chain key): the current one first, then one per loaded local key."""
    return vault.derived_keys(_PURPOSE)


_CHECKPOINT_FIELDS = ("environment_id", "chain_seq", "event_id", "hash", "at", "pruned")


def checkpoint_mac(key: bytes, cp: dict[str, Any]) -> str:
    """The MAC of a checkpoint (its own prefix: never equal to a link's input)."""
    body = orjson.dumps({k: cp[k] for k in _CHECKPOINT_FIELDS}, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, b"audit-checkpoint:" + body, hashlib.sha256).hexdigest()


async def _trusted_checkpoint(
    conn: AsyncConnection, keys: list[tuple[str, bytes]], environment_id: str
) -> dict[str, Any] | None | Literal[False]:
    """The environment's checkpoint (None: nothing pruned yet), or False when it does not
    verify: then nothing may be pruned (logged once here for every pruning path)."""
    cp = await store.get_checkpoint(conn, environment_id)
    if cp is not None and not _checkpoint_ok(keys, cp):
        log.error(
            "audit checkpoint of environment %s does not verify; not pruning "
            "(run grantkeeper audit verify)",
            environment_id,
        )
        return False
    return cp


def _checkpoint_ok(keys: list[tuple[str, bytes]], cp: dict[str, Any]) -> bool:
    return any(hmac.compare_digest(checkpoint_mac(k, cp), str(cp["mac"])) for _, k in keys)


# ---------------------------------------------------------------- sealing


@dataclass
class Sealer:
    """One process's sealer."""

    vault: Vault
    horizon: float = SEAL_HORIZON
    batch: int = _BATCH
    #: events this sealer has linked so far
    sealed: int = 0
    #: whether the last step left due events behind (it sealed a full batch of a chain):
    #: the worker comes back at once instead of after its interval
    more: bool = False
    #: where the next pass starts in its list of environments (see ``step``); each sealer
    #: starts somewhere else, so two passing at once mostly begin with different chains
    _turn: int = field(default_factory=lambda: secrets.randbelow(1 << 16), init=False, repr=False)

    async def step(self, engine: AsyncEngine, now: float) -> int:
        """Seal one batch of what is due; returns how many it linked (0: nothing for now).

        Each environment's chain is sealed in a transaction of its own under that
        environment's lock, so sealers in several workers link different environments
        in parallel and never the same chain at once. Each pass starts one environment
        further along its list (each sealer somewhere else), so sealers spread out
        instead of queueing in the same order.
        """
        cutoff = now - self.horizon
        # a read first, without a lock, so an idle pass never takes SQLite's write lock
        async with reading(engine) as conn:
            due = await store.unsealed_environments(conn, self.batch, before=cutoff)
        self.more = False
        if not due:
            return 0
        key = self.vault.derive_key(_PURPOSE)
        start = self._turn % len(due)
        self._turn += 1
        linked = 0
        for env, from_id in due[start:] + due[:start]:
            linked += await self._seal_chain(engine, key, env, from_id, cutoff)
        if linked:
            self.sealed += linked
            log.debug("sealed %d audit events", linked)
        return linked

    async def _seal_chain(
        self, engine: AsyncEngine, key: bytes, env: str, from_id: int, cutoff: float
    ) -> int:
        async with engine.begin() as conn:
            if not await store.lock_sealer(conn, env):
                return 0  # another sealer is linking this chain right now
            # read under the lock: the head and the unsealed rows as the last sealer left them
            rows = await store.unsealed(
                conn, self.batch, before=cutoff, environment_id=env, from_id=from_id
            )
            head = await store.chain_head(conn, env) if rows else None
            seq, head_hash = head if head is not None else (0, GENESIS)
            links: list[tuple[int, str, str, int, float]] = []
            for row in rows:
                h = link_hash(key, head_hash, row)
                seq += 1
                links.append((int(row["id"]), head_hash, h, seq, float(row["at"])))
                head_hash = h
            await store.set_links(conn, links)
        if len(rows) >= self.batch:
            self.more = True
        return len(links)


async def seal(
    engine: AsyncEngine, vault: Vault, now: float, *, horizon: float = SEAL_HORIZON
) -> int:
    """Seal every due event (all batches); returns how many were sealed."""
    sealer = Sealer(vault, horizon=horizon)
    while await sealer.step(engine, now):
        pass
    return sealer.sealed


# ---------------------------------------------------------------- verification

BreakKind = Literal["edited", "deleted", "reordered", "unsealed", "unknown_key", "checkpoint"]


@dataclass(frozen=True)
class BrokenLink:
    """The first event at which the chain does not hold."""

    event_id: int
    kind: BreakKind
    message: str


@dataclass
class ChainReport:
    environment_id: str
    events: int = 0
    sealed: int = 0
    pending: int = 0
    head_id: int | None = None
    head_hash: str | None = None
    broken: BrokenLink | None = None
    #: events the retention purge removed, and the last of them (None: nothing pruned)
    pruned: int = 0
    checkpoint: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment_id": self.environment_id,
            "ok": self.ok,
            "events": self.events,
            "sealed": self.sealed,
            "pending": self.pending,
            "head": {"id": self.head_id, "hash": self.head_hash}
            if self.head_id is not None
            else None,
            "pruned": self.pruned,
            "checkpoint": self.checkpoint,
            "broken": {
                "event_id": self.broken.event_id,
                "kind": self.broken.kind,
                "message": self.broken.message,
            }
            if self.broken is not None
            else None,
        }


class ChainVerifier:
    """Checks one environment's events fed in chain order; stops at the first broken link."""

    def __init__(
        self,
        environment_id: str,
        keys: list[tuple[str, bytes]],
        start: dict[str, Any] | None = None,
    ) -> None:
        self.report = ChainReport(environment_id)
        self._keys = keys
        self._key = keys[0][1]
        # after pruning, the chain goes on from the checkpoint (the last pruned event)
        self._prev_hash = str(start["hash"]) if start is not None else GENESIS
        self._prev_id: int | None = int(start["event_id"]) if start is not None else None
        #: set when an event links to a hash other than its predecessor's
        self.dangling: tuple[int, str] | None = None

    def feed(self, row: dict[str, Any]) -> bool:
        """False once the chain is broken (see ``report.broken`` / ``dangling``)."""
        report = self.report
        report.events += 1
        rid = int(row["id"])
        if row["hash"] is None:
            # the sealer writes position and seal together: only an edit separates them
            report.broken = BrokenLink(
                rid, "unsealed", f"event {rid} has a place in the chain but no seal (removed)"
            )
            return False
        if str(row["prev_hash"]) != self._prev_hash:
            self.dangling = (rid, str(row["prev_hash"]))
            return False
        stored = str(row["hash"])
        if not hmac.compare_digest(link_hash(self._key, self._prev_hash, row), stored):
            for _kid, k in self._keys:
                if hmac.compare_digest(link_hash(k, self._prev_hash, row), stored):
                    self._key = k
                    break
            else:
                report.broken = BrokenLink(
                    rid, "edited", f"event {rid} was modified after it was sealed (hash mismatch)"
                )
                return False
        report.sealed += 1
        self._prev_hash, self._prev_id = stored, rid
        report.head_id, report.head_hash = rid, stored
        return True

    def resolve_dangling(self, other_id: int | None) -> None:
        """Name the break of a link mismatch, given which event (if any) holds that hash."""
        assert self.dangling is not None
        rid, _ = self.dangling
        after = f"event {self._prev_id}" if self._prev_id is not None else "the chain's start"
        if other_id is not None and other_id != self._prev_id:
            self.report.broken = BrokenLink(
                rid,
                "reordered",
                f"event {rid} follows event {other_id} in the chain, not {after}: "
                "events were reordered",
            )
        else:
            self.report.broken = BrokenLink(
                rid,
                "deleted",
                f"event {rid} links to an event that is gone: an event between {after} "
                f"and event {rid} was deleted",
            )


async def verify(
    engine: AsyncEngine, vault: Vault, environment_id: str, *, page: int = 5000
) -> ChainReport:
    """Recompute the chain of one environment; the report names the first broken link."""
    keys = chain_keys(vault)
    async with reading(engine) as conn:
        if conn.dialect.name == "postgresql":
            # one snapshot: a purge committing between two pages (or between the checkpoint
            # and the first page) must not look like a deletion
            await conn.execution_options(isolation_level="REPEATABLE READ")
        cp = await store.get_checkpoint(conn, environment_id)
        checker = ChainVerifier(environment_id, keys, start=cp)
        after = 0
        if cp is not None:
            after = int(cp["chain_seq"])
            report = checker.report
            report.pruned = int(cp["pruned"])
            # with every event pruned, the checkpoint is the head to anchor
            report.head_id, report.head_hash = int(cp["event_id"]), str(cp["hash"])
            report.checkpoint = {
                "chain_seq": after,
                "event_id": int(cp["event_id"]),
                "hash": str(cp["hash"]),
                "at": float(cp["at"]),
            }
            if not _checkpoint_ok(keys, cp):
                report.broken = BrokenLink(
                    int(cp["event_id"]),
                    "checkpoint",
                    f"the audit checkpoint (events pruned up to chain position {after}) was "
                    "modified: its MAC does not match",
                )
                return report
            stale = await store.first_before(conn, environment_id, after)
            if stale is not None:
                report.broken = BrokenLink(
                    stale,
                    "checkpoint",
                    f"event {stale} has a chain position at or before the checkpoint "
                    f"(position {after}, pruned): it was inserted or moved there",
                )
                return report
        pending = await store.count_unchained(conn, environment_id)
        checker.report.events += pending
        checker.report.pending = pending
        while True:
            batch = await store.chain_after(conn, environment_id, after, page)
            for row in batch:
                if not checker.feed(row):
                    if checker.dangling is not None:
                        checker.resolve_dangling(
                            await store.event_with_hash(conn, environment_id, checker.dangling[1])
                        )
                    return checker.report
            if len(batch) < page:
                return checker.report
            after = int(batch[-1]["chain_seq"])


# ---------------------------------------------------------------- retention


async def prune(
    engine: AsyncEngine,
    vault: Vault,
    environment_id: str,
    *,
    cutoff: float,
    now: float,
    batch: int = _BATCH,
) -> int:
    """Prune one batch of the environment's oldest sealed events written before ``cutoff``;
    returns how many were deleted (0: nothing due, or the chain does not verify).

    Only a prefix of the chain goes (in chain order; the first event at or after ``cutoff``
    ends it, so an event sealed late waits for those sealed before it), after its links
    were checked, and the checkpoint moves to its last event in the same transaction.
    Events not sealed yet have no place in the chain and are never pruned.
    """
    # a read first: an idle pass never takes a write lock (SQLite) or the sealer's lock
    async with reading(engine) as conn:
        cp = await store.get_checkpoint(conn, environment_id)
        first = await store.chain_after(
            conn, environment_id, int(cp["chain_seq"]) if cp is not None else 0, 1
        )
    if not first or float(first[0]["at"]) >= cutoff:
        return 0
    keys = chain_keys(vault)
    async with engine.begin() as conn:
        # one pruner of this chain at a time, and never while a sealer extends it
        await store.lock_sealer(conn, environment_id, wait=True)
        trusted = await _trusted_checkpoint(conn, keys, environment_id)
        if trusted is False:
            return 0
        after = int(trusted["chain_seq"]) if trusted is not None else 0
        checker = ChainVerifier(environment_id, keys, start=trusted)
        last: dict[str, Any] | None = None
        for row in await store.chain_after(conn, environment_id, after, batch):
            if float(row["at"]) >= cutoff:
                break
            if not checker.feed(row):
                # never destroy the evidence of tampering
                log.error(
                    "audit chain of environment %s is broken at event %s; not pruning "
                    "(run grantkeeper audit verify)",
                    environment_id,
                    row["id"],
                )
                return 0
            last = row
        if last is None:
            return 0
        through = int(last["chain_seq"])
        n = await store.delete_chain(conn, environment_id, after, through)
        values: dict[str, Any] = {
            "environment_id": environment_id,
            "chain_seq": through,
            "event_id": int(last["id"]),
            "hash": str(last["hash"]),
            "at": float(last["at"]),
            "pruned": (int(trusted["pruned"]) if trusted is not None else 0) + n,
        }
        values["mac"] = checkpoint_mac(keys[0][1], values)
        values["updated_at"] = now
        await store.put_checkpoint(conn, values)
    log.info("pruned %d audit events of environment %s", n, environment_id)
    return n


class _NotYet(Exception):
    """A month cannot be dropped yet (rolls back what its transaction did so far)."""


#: (database, month) -> clock time before which a month that could not be dropped is not
#: tried again (each try walks the month's chain; the reasons pass slowly)
_RETRY_AT: dict[tuple[str, str], float] = {}
_RETRY_AFTER = 3600.0


async def prune_months(engine: AsyncEngine, vault: Vault, *, cutoff: float, now: float) -> int:
    """PostgreSQL: drop each monthly partition that ended before ``cutoff``, oldest first,
    once every event chained up to its last one may go; returns how many events went.

    Per environment, the events chained from the checkpoint through the month's last one
    are checked link by link and must all be older than ``cutoff`` (an event sealed late
    waits for those sealed before it); the few of them outside the month (around its
    boundaries) are deleted as rows, the checkpoint moves to the month's last event, and
    the partition is dropped, all in one transaction. The drop needs a short exclusive
    lock on the table: it waits at most ``lock_timeout`` (then the next pass tries again).
    """
    async with reading(engine) as conn:
        months = await auditparts.list_months(conn)
    total = 0
    for m in months:
        key = (str(engine.url), m.name)
        if m.end > cutoff or _RETRY_AT.get(key, now) > now:
            break
        try:
            total += await _drop_month(engine, vault, m, cutoff=cutoff, now=now)
        except _NotYet as exc:
            log.info("audit partition %s is not dropped yet: %s", m.name, exc)
            _RETRY_AT[key] = now + _RETRY_AFTER
            break
        _RETRY_AT.pop(key, None)
    return total


async def _drop_month(
    engine: AsyncEngine, vault: Vault, m: auditparts.Month, *, cutoff: float, now: float
) -> int:
    keys = chain_keys(vault)
    dropped = 0
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}s'"))
        await store.lock_all_chains(conn)
        for env, top, count, unsealed in await store.month_heads(conn, m.name):
            if unsealed:
                raise _NotYet(f"{unsealed} events of environment {env} are not sealed yet")
            cp = await _trusted_checkpoint(conn, keys, env)
            if cp is False:
                raise _NotYet("a checkpoint does not verify")
            after = int(cp["chain_seq"]) if cp is not None else 0
            if top is None or top <= after:
                dropped += count
                continue
            checker = ChainVerifier(env, keys, start=cp)
            last: dict[str, Any] | None = None
            pos = after
            while pos < top:
                rows = await store.chain_after(conn, env, pos, 5000)
                if not rows:
                    break
                for row in rows:
                    if int(row["chain_seq"]) > top:
                        break
                    if float(row["at"]) >= cutoff:
                        raise _NotYet(f"event {row['id']} is chained before its last event")
                    if not checker.feed(row):
                        log.error(
                            "audit chain of environment %s is broken at event %s; not "
                            "pruning (run grantkeeper audit verify)",
                            env,
                            row["id"],
                        )
                        raise _NotYet("the chain does not verify")
                    last = row
                pos = int(rows[-1]["chain_seq"])
            if last is None or int(last["chain_seq"]) != top:
                raise _NotYet(f"the chain of environment {env} does not reach its last event")
            # the events chained before the month's last one that lie outside it
            outside = await store.delete_chain_outside(conn, env, after, top, m.start, m.end)
            values: dict[str, Any] = {
                "environment_id": env,
                "chain_seq": top,
                "event_id": int(last["id"]),
                "hash": str(last["hash"]),
                "at": float(last["at"]),
                "pruned": (int(cp["pruned"]) if cp is not None else 0) + count + outside,
            }
            values["mac"] = checkpoint_mac(keys[0][1], values)
            values["updated_at"] = now
            await store.put_checkpoint(conn, values)
            dropped += count + outside
        await conn.execute(text(f"DROP TABLE {m.name}"))
    log.info("dropped audit partition %s (%d events)", m.name, dropped)
    return dropped
