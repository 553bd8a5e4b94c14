"""audit_events: monthly range partitions on PostgreSQL; the chain index is not unique

Revision ID: 0015_h18r_audit_partitions
Revises: 0014_h18r_retention

PostgreSQL: the table is rebuilt as ``PARTITION BY RANGE (at)`` with one partition per
month present (and the current and next month) plus a default partition, and every row is
copied over (ids, seals and chain positions unchanged; the id sequence carries on). The
primary key becomes ``(id, at)`` (a partitioned table's unique indexes must hold the
partition key), and so the ``(environment_id, chain_seq)`` index is no longer unique on
either backend. The copy holds an exclusive lock on the table: audited requests wait for
it (seconds per million events).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

from grantkeeper.store.auditparts import DEFAULT, Month, create_sql, month_of

revision = "0015_h18r_audit_partitions"
down_revision = "0014_h18r_retention"
branch_labels = None
depends_on = None

_OLD = "audit_events_unpartitioned"
#: (name, columns, where) of the table's indexes besides the primary key
_INDEXES = (
    ("ix_audit_env_grant", "environment_id, grant_id, id", ""),
    ("ix_audit_env_chain", "environment_id, chain_seq", ""),
    ("ix_audit_unsealed", "id", " WHERE hash IS NULL"),
    ("ix_audit_env_id", "environment_id, id", ""),
    ("ix_audit_env_action_at", "environment_id, action, at", ""),
)
#: months further back than this go to the default partition instead of one each
_MAX_MONTHS_BACK = 120


def _rebuild(partitioned: bool) -> None:
    bind = op.get_bind()
    op.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
    seq = bind.scalar(sa.text("SELECT pg_get_serial_sequence('audit_events', 'id')"))
    op.execute(f"ALTER TABLE audit_events RENAME TO {_OLD}")
    for name, _cols, _where in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(f"ALTER TABLE {_OLD} DROP CONSTRAINT pk_audit_events")
    if seq is not None:
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY NONE")
    if partitioned:
        op.execute(
            f"CREATE TABLE audit_events (LIKE {_OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (at)"
        )
        op.execute(f"CREATE TABLE {DEFAULT} PARTITION OF audit_events DEFAULT")
        now = time.time()
        lo = bind.scalar(sa.text(f"SELECT min(at) FROM {_OLD}"))  # noqa: S608 - a constant
        first = month_of(now)
        for _ in range(_MAX_MONTHS_BACK):
            if lo is None or first.start <= float(lo):
                break
            first = Month(first.year - (first.month == 1), (first.month - 2) % 12 + 1)
        m, last = first, month_of(now).next()
        while m <= last:
            op.execute(create_sql(m))
            m = m.next()
    else:
        op.execute(f"CREATE TABLE audit_events (LIKE {_OLD} INCLUDING DEFAULTS)")
    if seq is not None:
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY audit_events.id")
    op.execute(f"INSERT INTO audit_events SELECT * FROM {_OLD}")  # noqa: S608 - constants
    op.execute(f"DROP TABLE {_OLD}")
    pk = "id, at" if partitioned else "id"
    op.execute(f"ALTER TABLE audit_events ADD CONSTRAINT pk_audit_events PRIMARY KEY ({pk})")
    for name, cols, where in _INDEXES:
        unique = "UNIQUE " if name == "ix_audit_env_chain" and not partitioned else ""
        op.execute(f"CREATE {unique}INDEX {name} ON audit_events ({cols}){where}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rebuild(partitioned=True)
        return
    # SQLite stays a plain table; the chain index matches PostgreSQL's (not unique)
    op.drop_index("ix_audit_env_chain", table_name="audit_events")
    op.create_index("ix_audit_env_chain", "audit_events", ["environment_id", "chain_seq"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rebuild(partitioned=False)
        op.execute("DROP TABLE IF EXISTS audit_events_default")
        return
    op.drop_index("ix_audit_env_chain", table_name="audit_events")
    op.create_index(
        "ix_audit_env_chain", "audit_events", ["environment_id", "chain_seq"], unique=True
    )
