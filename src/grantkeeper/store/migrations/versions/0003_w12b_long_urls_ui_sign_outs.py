"""URL columns as Text; admin UI sign-outs; webhook endpoints scoped to integrations

Revision ID: 0003_w12b_long_urls_ui_sign_outs
Revises: 0002
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_w12b_long_urls_ui_sign_outs"
down_revision = "0002"
branch_labels = None
depends_on = None

_URL_COLUMNS = (
    ("integrations", "issuer"),
    ("integrations", "api_base_url"),
    ("grants", "api_base_url"),
    ("connect_sessions", "expected_issuer"),
)


def upgrade() -> None:
    # SQLite never enforces VARCHAR lengths; only PostgreSQL needs the wider type
    if op.get_bind().dialect.name == "postgresql":
        for table, column in _URL_COLUMNS:
            op.alter_column(table, column, type_=sa.Text(), existing_nullable=True)
    op.create_table(
        "ui_sign_outs",
        sa.Column("nonce_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("nonce_hash", name=op.f("pk_ui_sign_outs")),
    )
    with op.batch_alter_table("webhook_endpoints") as batch_op:
        batch_op.add_column(sa.Column("integration_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch_op:
        batch_op.drop_column("integration_ids")
    op.drop_table("ui_sign_outs")
    if op.get_bind().dialect.name == "postgresql":
        for table, column in _URL_COLUMNS:
            op.alter_column(table, column, type_=sa.String(length=1000), existing_nullable=True)
