"""The tamper-evident audit chain: each sealed event carries the hash of the one before.

Per environment, events are linked in id order::

    hash = HMAC-SHA256(K, prev_hash || canonical_json(event))

with ``prev_hash`` the previous event's hash (64 zeros for the first) and ``K`` derived
from the vault (``Vault.derive_key(b"audit-chain")``), so someone who can write the
database but does not hold a master key cannot forge a consistent chain.

**Sealed asynchronously.** Requests only ``INSERT`` events (in the transaction of the
change they describe); linking them at insert time would serialise every audited
request, including every token handed out, across all processes. The worker's sealer
(:func:`seal`) links events afterwards, in id order, but only events older than
:data:`SEAL_HORIZON` seconds. Ids are assigned at insert, not at commit: on PostgreSQL
a transaction holding id 10 may commit after id 11. The horizon is far longer than any
transaction that writes an audit event (they are short and never wait on a provider),
so when the sealer links event 11, event 10 has long been visible. On SQLite writers are
serialised (``BEGIN IMMEDIATE``), so commit order is id order anyway. On PostgreSQL a
transaction-scoped advisory lock lets exactly one sealer run at a time; each pass
re-reads the chain head inside that lock.

**What ``verify`` detects** (:func:`verify`): an edited event (its hash no longer
matches), a deleted one (the next event's ``prev_hash`` names an event that is gone),
reordered ones (a ``prev_hash`` that names another, existing event; the hash also
covers the id), an event whose seal was removed while later ones are sealed, and seals
made with no loaded key. It cannot detect the removal of the newest events on its own:
record the head it reports (``grantkeeper audit verify --json``) somewhere else to anchor
the chain. Events younger than the horizon are not sealed yet and are reported as
pending.

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
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.store import audit as store
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
    "link_hash",
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

_FIELDS = ("id", "environment_id", "at", "actor", "action", "grant_id", "integration_id", "detail")


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes an event's hash covers: its fields as sorted, compact JSON."""
    return orjson.dumps({k: row[k] for k in _FIELDS}, option=orjson.OPT_SORT_KEYS)


def link_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + canonical(row), hashlib.sha256).hexdigest()


def chain_keys(vault: Vault) -> list[tuple[str, bytes]]:
    """(label, chain key): the current one first, then one per loaded local key."""
    return vault.derived_keys(_PURPOSE)


# ---------------------------------------------------------------- sealing


@dataclass
class Sealer:
    """State of one process's sealer: how far it has looked (an optimisation only)."""

    vault: Vault
    horizon: float = SEAL_HORIZON
    batch: int = _BATCH
    #: events this sealer has linked so far
    sealed: int = 0
    _cursor: int | None = field(default=None, repr=False)
    _late_warned: set[int] = field(default_factory=set, repr=False)

    async def step(self, engine: AsyncEngine, now: float) -> int:
        """Seal what is due; returns how many events it got past (0: nothing more for now)."""
        cutoff = now - self.horizon
        # a read first, so an idle pass never takes SQLite's write lock
        async with reading(engine) as conn:
            if self._cursor is None:
                self._cursor = await store.last_sealed_id(conn)
            probe = await store.events_after(conn, self._cursor, 1)
        if not probe or probe[0]["at"] >= cutoff:
            return 0
        key = self.vault.derive_key(_PURPOSE)
        async with engine.begin() as conn:
            if not await store.lock_sealer(conn):
                return 0  # another process is sealing
            cursor = self._cursor
            rows = await store.events_after(conn, cursor, self.batch)
            heads: dict[str, tuple[int, str]] = {}
            links: list[tuple[int, str, str]] = []
            advanced = 0
            for row in rows:
                if row["at"] >= cutoff:
                    break  # younger events (and all after them) wait for a later pass
                cursor = int(row["id"])
                advanced += 1
                if row["hash"] is not None:
                    continue  # sealed by another process
                env = str(row["environment_id"])
                if env not in heads:
                    head = await store.chain_head(conn, env)
                    heads[env] = head if head is not None else (0, GENESIS)
                head_id, head_hash = heads[env]
                if row["id"] < head_id:
                    # committed after a later event was sealed: cannot be linked in order
                    if row["id"] not in self._late_warned:
                        self._late_warned.add(int(row["id"]))
                        log.warning("audit event %s committed too late to be sealed", row["id"])
                    continue
                h = link_hash(key, head_hash, row)
                links.append((int(row["id"]), head_hash, h))
                heads[env] = (int(row["id"]), h)
            await store.set_links(conn, links)
        self._cursor = cursor  # only once the links are committed
        if links:
            self.sealed += len(links)
            log.debug("sealed %d audit events up to id %s", len(links), links[-1][0])
        return advanced


async def seal(
    engine: AsyncEngine, vault: Vault, now: float, *, horizon: float = SEAL_HORIZON
) -> int:
    """Seal every due event (all batches); returns how many were sealed."""
    sealer = Sealer(vault, horizon=horizon)
    while await sealer.step(engine, now):
        pass
    return sealer.sealed


# ---------------------------------------------------------------- verification

BreakKind = Literal["edited", "deleted", "reordered", "unsealed", "unknown_key"]


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
            "broken": {
                "event_id": self.broken.event_id,
                "kind": self.broken.kind,
                "message": self.broken.message,
            }
            if self.broken is not None
            else None,
        }


class ChainVerifier:
    """Checks one environment's events fed in id order; stops at the first broken link."""

    def __init__(self, environment_id: str, keys: list[tuple[str, bytes]]) -> None:
        self.report = ChainReport(environment_id)
        self._keys = keys
        self._key = keys[0][1]
        self._prev_hash = GENESIS
        self._prev_id: int | None = None
        self._first_unsealed: int | None = None
        #: set when an event links to a hash other than its predecessor's
        self.dangling: tuple[int, str] | None = None

    def feed(self, row: dict[str, Any]) -> bool:
        """False once the chain is broken (see ``report.broken`` / ``dangling``)."""
        report = self.report
        report.events += 1
        rid = int(row["id"])
        if row["hash"] is None:
            report.pending += 1
            if self._first_unsealed is None:
                self._first_unsealed = rid
            return True
        if self._first_unsealed is not None:
            report.broken = BrokenLink(
                self._first_unsealed,
                "unsealed",
                f"event {self._first_unsealed} has no seal but the later event {rid} is "
                "sealed (its seal was removed, or it was inserted afterwards)",
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
    checker = ChainVerifier(environment_id, chain_keys(vault))
    after = 0
    async with reading(engine) as conn:
        while True:
            batch = await store.events_after(conn, after, page, environment_id=environment_id)
            for row in batch:
                if not checker.feed(row):
                    if checker.dangling is not None:
                        checker.resolve_dangling(
                            await store.event_with_hash(conn, environment_id, checker.dangling[1])
                        )
                    return checker.report
            if len(batch) < page:
                return checker.report
            after = int(batch[-1]["id"])
