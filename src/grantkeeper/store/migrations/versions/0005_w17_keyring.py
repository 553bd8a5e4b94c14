"""the keyring: key-encryption keys wrapped under root keys; per-environment roots

Revision ID: 0005_w17_keyring
Revises: 0004_w16_mcp_integrations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_w17_keyring"
down_revision = "0004_w16_mcp_integrations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("root_key_id", sa.String(length=32), nullable=True))
    op.create_table(
        "keyring_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("environment_id", sa.String(length=36), nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("root_key_id", sa.String(length=32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("activate_at", sa.Double(), nullable=False),
        sa.Column("retired_at", sa.Double(), nullable=True),
        sa.Column("wraps", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
            name=op.f("fk_keyring_keys_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyring_keys")),
    )


def downgrade() -> None:
    op.drop_table("keyring_keys")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("root_key_id")
