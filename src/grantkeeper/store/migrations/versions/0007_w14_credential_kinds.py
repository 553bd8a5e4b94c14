"""credential kinds: sealed credentials on grants; stamp, verification and app key on integrations

Revision ID: 0007_w14_credential_kinds
Revises: 0006_w15_end_user_access
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_w14_credential_kinds"
down_revision = "0006_w15_end_user_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("credentials_ct", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("integrations") as batch:
        batch.add_column(sa.Column("stamp", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("verify_request", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("app_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("private_key_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("integrations") as batch:
        batch.drop_column("private_key_ct")
        batch.drop_column("app_id")
        batch.drop_column("verify_request")
        batch.drop_column("stamp")
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("credentials_ct")
