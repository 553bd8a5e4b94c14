"""MCP integrations: what discovery found and the registration access token (sealed)

Revision ID: 0004_w16_mcp_integrations
Revises: 0003_lead20_lifecycle_signals
Create Date: 2026-11-30 05:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_w16_mcp_integrations"
down_revision = "0003_lead20_lifecycle_signals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mcp", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("registration_token_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.drop_column("registration_token_ct")
        batch_op.drop_column("mcp")
