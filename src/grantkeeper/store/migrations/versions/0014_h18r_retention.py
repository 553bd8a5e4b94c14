"""retention purge: indexes for the purge, the audit chain's checkpoint table

Revision ID: 0014_h18r_retention
Revises: 0013_h18b_keyset_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_h18r_retention"
down_revision = "0013_h18b_keyset_indexes"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_connect_sessions_expires", "connect_sessions", ["expires_at"]),
    ("ix_webhook_events_created", "webhook_events", ["created_at"]),
    ("ix_webhook_deliveries_finished", "webhook_deliveries", ["status", "created_at"]),
    ("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"]),
)


def upgrade() -> None:
    for name, table, cols in _INDEXES:
        op.create_index(name, table, cols)
    op.create_table(
        "audit_checkpoints",
        sa.Column("environment_id", sa.String(length=36), nullable=False),
        sa.Column("chain_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("pruned", sa.BigInteger(), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("environment_id", name=op.f("pk_audit_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    for name, table, _cols in _INDEXES:
        op.drop_index(name, table_name=table)
