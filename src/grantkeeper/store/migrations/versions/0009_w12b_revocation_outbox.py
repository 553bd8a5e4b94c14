"""revocation outbox: provider revocations retried by the worker

Revision ID: 0009_w12b_revocation_outbox
Revises: 0008_w12b_audit_chain_order
Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_w12b_revocation_outbox"
down_revision = "0008_w12b_audit_chain_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revocation_outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("environment_id", sa.String(length=36), nullable=False),
        sa.Column("grant_id", sa.String(length=36), nullable=False),
        sa.Column("integration_id", sa.String(length=63), nullable=False),
        sa.Column("token_type_hint", sa.String(length=20), nullable=False),
        sa.Column("token_ct", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("done_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocation_outbox")),
    )
    with op.batch_alter_table("revocation_outbox") as batch_op:
        batch_op.create_index(
            "ix_revocation_outbox_due", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("revocation_outbox") as batch_op:
        batch_op.drop_index("ix_revocation_outbox_due")
    op.drop_table("revocation_outbox")
