"""Online key rotation: re-wrap every data key under the newest key-encryption key.

Only the wrapped data key in each ciphertext's header changes; the sealed
value is untouched. Each row is rewritten only if its ciphertext is still the
one read (compare-and-swap), so rotation runs beside live traffic, can be
interrupted at any point, and resumes by simply running again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Column, ColumnElement, Table, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from grantkeeper.errors import DecryptionFailed
from grantkeeper.store.db import reading
from grantkeeper.store.tables import connect_sessions, grants, integrations, webhook_endpoints
from grantkeeper.vault import Vault, aad_for

__all__ = ["RotationReport", "count_pending", "probe", "rotate"]

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


def _col(t: Table, field: str) -> Column[bytes]:
    return t.c[f"{field}_ct"]


def _aad(target: _Target, row: dict[str, object], field: str) -> bytes:
    version = int(row["version"]) if target.name == "grants" else 0  # type: ignore[call-overload]
    return aad_for(str(row["environment_id"]), target.name, str(row["id"]), field, version)


def _has_secret(t: _Target) -> ColumnElement[bool]:
    return or_(*(_col(t.table, f).is_not(None) for f in t.fields))


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
                    except DecryptionFailed:
                        continue
                    return True
    return False if seen else None


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
        cols = [tbl.c.environment_id, tbl.c.id] + ([tbl.c.version] if t.name == "grants" else [])
        cols += [_col(tbl, f) for f in t.fields]
        last: tuple[str, str] | None = None
        while True:
            q = (
                select(*cols)
                .where(_has_secret(t))
                .order_by(tbl.c.environment_id, tbl.c.id)
                .limit(batch)
            )
            if last is not None:
                q = q.where(
                    (tbl.c.environment_id > last[0])
                    | and_(tbl.c.environment_id == last[0], tbl.c.id > last[1])
                )
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
                        try:
                            if not vault.needs_rewrap(blob):
                                continue
                            changes[f"{f}_ct"] = vault.rewrap(blob, _aad(t, row, f))
                        except DecryptionFailed as exc:
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
