"""Monthly range partitions of ``audit_events`` on PostgreSQL (SQLite keeps a plain table).

Partition ``audit_events_pYYYYMM`` holds the events whose ``at`` (epoch seconds) falls in
that UTC month; ``audit_events_default`` takes anything else, so an insert never fails
for want of a partition. The migration creates the months present plus the current and
the next; the worker keeps :data:`AHEAD` months ahead (:func:`ensure_ahead`), and the
retention purge drops whole expired months (``auditchain.prune_months``) instead of
deleting their rows one by one.

The primary key is ``(id, at)``: PostgreSQL requires the partition key in every unique
index, which is also why the chain's ``(environment_id, chain_seq)`` index is not unique
(the sealer's lock keeps positions unique; ``audit verify`` would name a duplicate).
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "AHEAD",
    "DEFAULT",
    "Month",
    "attach_sql",
    "create_sql",
    "ensure_ahead",
    "include_name",
    "list_months",
    "month_of",
    "wanted",
]

log = logging.getLogger(__name__)

DEFAULT = "audit_events_default"
#: months the worker keeps created beyond the current one
AHEAD = 2
_NAME = re.compile(r"audit_events_p(\d{4})(\d{2})")


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @property
    def name(self) -> str:
        return f"audit_events_p{self.year:04d}{self.month:02d}"

    @property
    def start(self) -> float:
        return float(calendar.timegm((self.year, self.month, 1, 0, 0, 0)))

    @property
    def end(self) -> float:
        return self.next().start

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    @classmethod
    def parse(cls, name: str) -> Month | None:
        m = _NAME.fullmatch(name)
        return cls(int(m.group(1)), int(m.group(2))) if m is not None else None


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name``: the partitions are this module's, not ``tables.py``'s."""
    return not (type_ == "table" and name is not None and (name == DEFAULT or Month.parse(name)))


def month_of(ts: float) -> Month:
    t = time.gmtime(ts)
    return Month(t.tm_year, t.tm_mon)


def create_sql(m: Month) -> str:
    """A partition created in place (takes an ACCESS EXCLUSIVE lock on the parent: the
    migration only, which holds it anyway)."""
    return (
        f"CREATE TABLE {m.name} PARTITION OF audit_events "
        f"FOR VALUES FROM ({m.start!r}) TO ({m.end!r})"
    )


def attach_sql(m: Month) -> list[str]:
    """A partition made aside and attached: only a SHARE UPDATE EXCLUSIVE lock on the
    parent, so token reads keep inserting their audit rows meanwhile."""
    return [
        f"CREATE TABLE {m.name} (LIKE audit_events INCLUDING DEFAULTS)",
        f"ALTER TABLE audit_events ATTACH PARTITION {m.name} "
        f"FOR VALUES FROM ({m.start!r}) TO ({m.end!r})",
    ]


async def list_months(conn: AsyncConnection) -> list[Month]:
    """The monthly partitions that exist, oldest first (empty on SQLite)."""
    if conn.dialect.name != "postgresql":
        return []
    rows = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('audit_events')"
        )
    )
    return sorted(m for (name,) in rows if (m := Month.parse(str(name))) is not None)


def wanted(now: float, ahead: int = AHEAD) -> list[Month]:
    """The months that should exist at ``now``: the current one and ``ahead`` more."""
    out = [month_of(now)]
    for _ in range(ahead):
        out.append(out[-1].next())
    return out


async def ensure_ahead(conn: AsyncConnection, now: float, ahead: int = AHEAD) -> list[Month]:
    """Create the current month's partition and ``ahead`` more where missing (PostgreSQL;
    the caller's transaction, under the sealer lock); returns those it created. A month the
    default partition already holds rows of is left there (logged; pruned row by row)."""
    if conn.dialect.name != "postgresql":
        return []
    have = set(await list_months(conn))
    made: list[Month] = []
    for m in wanted(now, ahead):
        if m in have:
            continue
        try:
            async with conn.begin_nested():
                for sql in attach_sql(m):
                    await conn.execute(text(sql))
        except DBAPIError as exc:
            log.warning(
                "could not create audit partition %s (%s); its events stay in %s",
                m.name,
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                DEFAULT,
            )
            continue
        made.append(m)
    return made
