"""refresh_slots: per-provider refresh concurrency across all workers

Revision ID: 0011_h18b_refresh_slots
Revises: 0010_w12a_integration_failure
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_h18b_refresh_slots"
down_revision = "0010_w12a_integration_failure"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refresh_slots",
        sa.Column("provider", sa.String(63), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("provider", "slot", name=op.f("pk_refresh_slots")),
    )


def downgrade() -> None:
    op.drop_table("refresh_slots")
