"""Online key rotation: re-wrap every data key under the newest key-encryption key.

Only the wrapped data key in each ciphertext's header changes; the sealed
value is untouched (a format-v1 value is re-sealed as v2). Each row is rewritten
only if its ciphertext is still the one read (compare-and-swap), so rotation runs
beside live traffic, can be interrupted at any point, and resumes by simply
running again. :func:`rotate_until_done` repeats full passes until one finds
nothing left under an old key: a process still running with the old
configuration may write behind the first pass's cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, ColumnElement, Select, Table, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.errors import DecryptionFailed, KeysUnavailable
from grantkeeper.store.db import reading
from grantkeeper.store.tables import connect_sessions, grants, integrations, webhook_endpoints
from grantkeeper.vault import Vault, aad_for

if TYPE_CHECKING:
    from grantkeeper.vault.manager import KeyManager

__all__ = [
    "RotationReport",
    "count_by_key",
    "count_pending",
    "page_query",
    "probe",
    "probe_failure",
    "rotate",
    "rotate_until_done",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Target:
    table: Table
    name: str
    key_cols: tuple[str, ...]
    fields: tuple[str, ...]


_TARGETS = (
    _Target(integrations, "integrations", ("environment_id", "id"), ("client_secret",)),
    _Target(
        grants, "grants", ("environment_id", "id"), ("access_token", "refresh_token", "id_token")
    ),
    _Target(webhook_endpoints, "webhook_endpoints", ("environment_id", "id"), ("secret",)),
    _Target(connect_sessions, "connect_sessions", ("environment_id", "id"), ("verifier", "export")),
)


@dataclass
class RotationReport:
    examined: int = 0
    rewrapped: int = 0
    skipped_changed: int = 0
    #: ciphertexts that did not open (tampered, or sealed under a key not loaded): left as
    #: they are, logged by table and row id, and rotation goes on with the rest
    failed: int = 0
    #: full passes made (``rotate_until_done``)
    passes: int = 0
    #: after the last pass: ciphertexts still not under the current key, by key id
    remaining: dict[str, int] = field(default_factory=dict)

    def add(self, other: RotationReport) -> None:
        self.examined += other.examined
        self.rewrapped += other.rewrapped
        self.skipped_changed += other.skipped_changed
        self.failed = other.failed  # failures are re-met by every pass: the last count
        self.passes += 1


def _col(t: Table, field: str) -> Column[bytes]:
    return t.c[f"{field}_ct"]


def _aad(target: _Target, row: dict[str, object], field: str) -> bytes:
    version = int(row["version"]) if target.name == "grants" else 0  # type: ignore[call-overload]
    return aad_for(str(row["environment_id"]), target.name, str(row["id"]), field, version)


def _has_secret(t: _Target) -> ColumnElement[bool]:
    return or_(*(_col(t.table, f).is_not(None) for f in t.fields))


def page_query(
    t: _Target, cols: list[Column[Any]], last: tuple[str, str] | None, batch: int
) -> Select[Any]:
    """One page of rows holding secrets, after ``last`` in (environment_id, id) order."""
    tbl = t.table
    q = select(*cols).where(_has_secret(t)).order_by(tbl.c.environment_id, tbl.c.id).limit(batch)
    if last is not None:
        # a row-value comparison: one range on the (environment_id, id) index, where the
        # equivalent OR made every page scan and sort from the start (quadratic at 1M rows)
        q = q.where(tuple_(tbl.c.environment_id, tbl.c.id) > tuple_(*last))
    return q


async def count_pending(engine: AsyncEngine, vault: Vault) -> int:
    """Rows holding at least one ciphertext (what ``rotate`` examines; an upper bound)."""
    total = 0
    async with reading(engine) as conn:
        for t in _TARGETS:
            r = await conn.execute(select(func.count()).select_from(t.table).where(_has_secret(t)))
            total += int(r.scalar_one())
    return total


async def probe(engine: AsyncEngine, vault: Vault, *, sample: int = 3) -> bool | None:
    """Whether the loaded keys open what is stored: True as soon as one sampled ciphertext
    opens, False when none of them does (wrong or missing key), None when nothing is stored."""
    seen = False
    async with reading(engine) as conn:
        for t in _TARGETS:
            tbl = t.table
            extra = [tbl.c.version] if t.name == "grants" else []
            for f in t.fields:
                col = _col(tbl, f)
                q = (
                    select(tbl.c.environment_id, tbl.c.id, *extra, col)
                    .where(col.is_not(None))
                    .limit(sample)
                )
                for m in (await conn.execute(q)).mappings().all():
                    seen = True
                    try:
                        vault.open(m[f"{f}_ct"], _aad(t, dict(m), f))
                    except KeysUnavailable:
                        continue  # an environment whose own root is down: not this question
                    except DecryptionFailed:
                        continue
                    return True
    return False if seen else None


async def probe_failure(engine: AsyncEngine, keys: KeyManager, *, sample: int = 3) -> str | None:
    """None when the loaded keys open what is stored (or nothing is stored); else one line
    naming the key id and backend the stored secrets are sealed under."""
    vault = keys.vault
    bad: tuple[int, str] | None = None
    async with reading(engine) as conn:
        for t in _TARGETS:
            tbl = t.table
            extra = [tbl.c.version] if t.name == "grants" else []
            for f in t.fields:
                col = _col(tbl, f)
                q = (
                    select(tbl.c.environment_id, tbl.c.id, *extra, col)
                    .where(col.is_not(None))
                    .limit(sample)
                )
                for m in (await conn.execute(q)).mappings().all():
                    blob = m[f"{f}_ct"]
                    try:
                        vault.open(blob, _aad(t, dict(m), f))
                    except KeysUnavailable:
                        continue
                    except DecryptionFailed:
                        if bad is None and len(blob) > 2:
                            try:
                                bad = (blob[0], vault.key_id(blob))
                            except DecryptionFailed:
                                continue
                        continue
                    return None
    if bad is None:
        return None
    version, kid = bad
    if version == 1:
        status = keys.status.get(kid)
        if status is None:
            return (
                f"stored secrets are sealed under key '{kid}', which is not in "
                "GRANTKEEPER_MASTER_KEYS: refusing to start"
            )
        return (
            f"stored secrets do not open with key '{kid}' ({status.backend}) of "
            "GRANTKEEPER_MASTER_KEYS: it is not the key that sealed them; refusing to start"
        )
    return (
        f"stored secrets are sealed under keyring key '{kid}', which is not in the keyring: "
        "the database does not belong to these keys; refusing to start"
    )


async def rotate(
    engine: AsyncEngine,
    vault: Vault,
    *,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> RotationReport:
    report = RotationReport()
    for t in _TARGETS:
        tbl = t.table
        cols: list[Column[Any]] = [tbl.c.environment_id, tbl.c.id]
        cols += [tbl.c.version] if t.name == "grants" else []
        cols += [_col(tbl, f) for f in t.fields]
        last: tuple[str, str] | None = None
        while True:
            q = page_query(t, cols, last, batch)
            async with reading(engine) as conn:
                rows = [dict(m) for m in (await conn.execute(q)).mappings().all()]
            if not rows:
                break
            last = (rows[-1]["environment_id"], rows[-1]["id"])
            async with engine.begin() as conn:
                for row in rows:
                    report.examined += 1
                    changes: dict[str, bytes] = {}
                    conds = [tbl.c.environment_id == row["environment_id"], tbl.c.id == row["id"]]
                    for f in t.fields:
                        blob = row[f"{f}_ct"]
                        if blob is None:
                            continue
                        aad = _aad(t, row, f)
                        try:
                            if not vault.needs_rewrap(blob, aad):
                                continue
                            changes[f"{f}_ct"] = vault.rewrap(blob, aad)
                        except (DecryptionFailed, KeysUnavailable) as exc:
                            report.failed += 1
                            log.error(
                                "key rotation: %s %s field %s does not open (%s); left as is",
                                t.name,
                                row["id"],
                                f,
                                exc.code,
                            )
                            continue
                        conds.append(_col(tbl, f) == blob)
                    if not changes:
                        continue
                    r = await conn.execute(update(tbl).where(*conds).values(**changes))
                    if r.rowcount:
                        report.rewrapped += 1
                    else:
                        report.skipped_changed += (
                            1  # rewritten meanwhile: sealed under the newest key already
                        )
            if progress is not None:
                progress(len(rows))
    return report


async def count_by_key(engine: AsyncEngine, vault: Vault) -> Counter[str]:
    """The final count: ciphertexts not under the key that seals for their place, by key id."""
    out: Counter[str] = Counter()
    for t in _TARGETS:
        tbl = t.table
        cols = [tbl.c.environment_id, tbl.c.id] + ([tbl.c.version] if t.name == "grants" else [])
        cols += [_col(tbl, f) for f in t.fields]
        async with reading(engine) as conn:
            rows = [
                dict(m)
                for m in (await conn.execute(select(*cols).where(_has_secret(t)))).mappings()
            ]
        for row in rows:
            for f in t.fields:
                blob = row[f"{f}_ct"]
                if blob is None:
                    continue
                try:
                    if vault.needs_rewrap(blob, _aad(t, row, f)):
                        out[vault.key_id(blob)] += 1
                except (DecryptionFailed, KeysUnavailable):
                    out["(unreadable)"] += 1
    return out


async def rotate_until_done(
    engine: AsyncEngine,
    vault: Vault,
    *,
    timeout: float = 120.0,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> RotationReport:
    """Full passes until one rewraps nothing and the final count by key id finds only the
    ciphertexts that do not open (or ``timeout`` passes: ``remaining`` says what is left)."""
    total = RotationReport()
    deadline = time.monotonic() + timeout
    while True:
        report = await rotate(engine, vault, batch=batch, progress=progress)
        total.add(report)
        remaining = await count_by_key(engine, vault)
        total.remaining = dict(remaining)
        if sum(remaining.values()) <= report.failed:
            return total
        if time.monotonic() > deadline:
            return total
        log.warning(
            "key rotation: %d ciphertext(s) written under old keys during the pass (%s); "
            "another pass",
            sum(remaining.values()) - report.failed,
            ", ".join(f"{k}: {n}" for k, n in sorted(remaining.items())),
        )
        await asyncio.sleep(0.2)
