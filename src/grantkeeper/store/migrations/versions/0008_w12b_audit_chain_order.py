"""audit chain in seal order (chain_seq), index of unsealed events

Revision ID: 0008_w12b_audit_chain_order
Revises: 0007_w14_credential_kinds
Create Date: 2026-11-30 05:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_w12b_audit_chain_order"
down_revision = "0007_w14_credential_kinds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.add_column(sa.Column("chain_seq", sa.BigInteger(), nullable=True))
    # events sealed so far were linked in id order: that is their chain position
    op.execute(
        "UPDATE audit_events SET chain_seq = (SELECT s.rn FROM (SELECT id, ROW_NUMBER() OVER "
        "(PARTITION BY environment_id ORDER BY id) AS rn FROM audit_events "
        "WHERE hash IS NOT NULL) s WHERE s.id = audit_events.id) WHERE hash IS NOT NULL"
    )
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.create_index("ix_audit_env_chain", ["environment_id", "chain_seq"], unique=True)
        batch_op.create_index(
            "ix_audit_unsealed",
            ["id"],
            postgresql_where=sa.text("hash IS NULL"),
            sqlite_where=sa.text("hash IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.drop_index("ix_audit_unsealed")
        batch_op.drop_index("ix_audit_env_chain")
        batch_op.drop_column("chain_seq")
