"""Dashboard numbers: grants by status, and refresh outcomes per hour for an SVG chart.

Refresh outcomes are counted from the audit trail (``grant.refreshed``,
``grant.refresh_failed``, ``grant.invalid``) and aggregated in SQL, so the chart
costs one grouped query. Both honour an admin key's integration allowlist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grantkeeper.store.tables import audit_events, grants

__all__ = ["SERIES", "Bar", "Chart", "build_chart", "grant_counts", "refresh_chart"]

HOURS = 24
#: (audit action, label, CSS class)
SERIES = (
    ("grant.refreshed", "Refreshed", "ok"),
    ("grant.refresh_failed", "Failed (will retry)", "warn"),
    ("grant.invalid", "Became invalid", "bad"),
)

# geometry of the SVG (viewBox units)
WIDTH = 720
HEIGHT = 200
LEFT = 40
BOTTOM = 24
TOP = 10


@dataclass(frozen=True, slots=True)
class Bar:
    css: str
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Hour:
    label: str
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    hours: tuple[Hour, ...]
    bars: tuple[Bar, ...]
    max_value: int
    y_ticks: tuple[tuple[float, int], ...]
    x_ticks: tuple[tuple[float, str], ...]
    totals: tuple[int, ...]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM
    top: int = TOP

    @property
    def empty(self) -> bool:
        return not any(self.totals)


def _nice_max(v: int) -> int:
    if v <= 4:
        return 4
    step = 1
    while True:
        for m in (1, 2, 5):
            if v <= 4 * step * m:
                return 4 * step * m
        step *= 10


async def grant_counts(
    conn: AsyncConnection, environment_id: str, integration_ids: frozenset[str] | None
) -> dict[str, int]:
    q = select(grants.c.status, func.count()).where(grants.c.environment_id == environment_id)
    if integration_ids is not None:
        q = q.where(grants.c.integration_id.in_(sorted(integration_ids)))
    r = await conn.execute(q.group_by(grants.c.status))
    return {str(s): int(n) for s, n in r.all()}


async def refresh_chart(
    conn: AsyncConnection,
    environment_id: str,
    now: float,
    integration_ids: frozenset[str] | None = None,
) -> Chart:
    # the current hour is the last bucket; the window starts 23 full hours before it
    end = (int(now) // 3600 + 1) * 3600
    start = end - HOURS * 3600
    offset = (audit_events.c.at - start) / 3600
    # rows are never before ``start``, so truncation is the floor on both databases
    bucket = func.floor(offset) if conn.dialect.name == "postgresql" else cast(offset, Integer)
    q = (
        select(bucket.label("b"), audit_events.c.action, func.count().label("n"))
        .where(
            audit_events.c.environment_id == environment_id,
            audit_events.c.at >= start,
            audit_events.c.at < end,
            audit_events.c.action.in_([s[0] for s in SERIES]),
        )
        .group_by(bucket, audit_events.c.action)
    )
    if integration_ids is not None:
        q = q.where(audit_events.c.integration_id.in_(sorted(integration_ids)))
    counts = [[0] * len(SERIES) for _ in range(HOURS)]
    index = {s[0]: i for i, s in enumerate(SERIES)}
    for b, action, n in (await conn.execute(q)).all():
        h = int(b)
        if 0 <= h < HOURS and action in index:
            counts[h][index[action]] += int(n)
    return build_chart(start, counts)


def build_chart(start: int, counts: list[list[int]]) -> Chart:
    """Stacked bars, one per hour; pure so it can be tested without a database."""
    peak = max((sum(c) for c in counts), default=0)
    top = _nice_max(peak)
    plot_w = WIDTH - LEFT - 8
    plot_h = HEIGHT - BOTTOM - TOP
    slot = plot_w / HOURS
    bar_w = slot * 0.7
    bars: list[Bar] = []
    hours: list[Hour] = []
    x_ticks: list[tuple[float, str]] = []
    for h, row in enumerate(counts):
        label = time.strftime("%H:00", time.gmtime(start + h * 3600))
        hours.append(Hour(label, tuple(row)))
        x = LEFT + h * slot + (slot - bar_w) / 2
        if h % 3 == 0:
            x_ticks.append((round(x + bar_w / 2, 1), label))
        base: float = HEIGHT - BOTTOM
        for (_, name, css), n in zip(SERIES, row, strict=True):
            if not n:
                continue
            height = plot_h * n / top
            base -= height
            bars.append(
                Bar(
                    css,
                    round(x, 1),
                    round(base, 1),
                    round(bar_w, 1),
                    round(height, 1),
                    f"{label} UTC: {n} {name.lower()}",
                )
            )
    y_ticks = tuple((round(HEIGHT - BOTTOM - plot_h * i / 4, 1), top * i // 4) for i in range(5))
    totals = tuple(sum(c[i] for c in counts) for i in range(len(SERIES)))
    return Chart(tuple(hours), tuple(bars), top, y_ticks, tuple(x_ticks), totals)
