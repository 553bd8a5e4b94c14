"""integration failure state (invalid_client / unauthorized_client are the integration's problem)

Revision ID: 0010_w12a_integration_failure
Revises: 0009_w12b_revocation_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_w12a_integration_failure"
down_revision = "0009_w12b_revocation_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_code", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("failure_description", sa.String(500), nullable=True))
        batch_op.add_column(sa.Column("failed_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("retry_at", sa.Double(), nullable=True))
        batch_op.add_column(
            sa.Column("failure_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        for name in (
            "failure_attempts",
            "retry_at",
            "failed_at",
            "failure_description",
            "failure_code",
        ):
            batch_op.drop_column(name)
