"""integrations.token_params: extra token-request parameters (audience, resource)

Revision ID: 0012_h14_token_params
Revises: 0011_h18b_refresh_slots
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_h14_token_params"
down_revision = "0011_h18b_refresh_slots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_params", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.drop_column("token_params")
