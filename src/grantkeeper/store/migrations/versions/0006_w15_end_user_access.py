"""end-user access: subject issuers, end-user tokens, integrations.client_access

Revision ID: 0006_w15_end_user_access
Revises: 0005_w17_keyring
Create Date: 2026-11-30 05:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_w15_end_user_access"
down_revision = "0005_w17_keyring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_issuers",
        sa.Column("environment_id", sa.String(length=36), nullable=False),
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("issuer", sa.String(length=1000), nullable=False),
        sa.Column("jwks_uri", sa.String(length=2000), nullable=False),
        sa.Column("audience", sa.String(length=1000), nullable=False),
        sa.Column("user_id_claim", sa.String(length=100), nullable=False),
        sa.Column("allowed_origins", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
            name=op.f("fk_subject_issuers_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("environment_id", "id", name=op.f("pk_subject_issuers")),
    )
    with op.batch_alter_table("subject_issuers", schema=None) as batch_op:
        batch_op.create_index("ix_subject_issuers_issuer", ["issuer"], unique=False)

    op.create_table(
        "end_user_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("integration_ids", sa.JSON(), nullable=True),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
            name=op.f("fk_end_user_tokens_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_end_user_tokens")),
    )
    with op.batch_alter_table("end_user_tokens", schema=None) as batch_op:
        batch_op.create_index(
            "ix_end_user_tokens_env_user", ["environment_id", "user_id"], unique=False
        )
        batch_op.create_index("ix_end_user_tokens_expires", ["expires_at"], unique=False)

    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("client_access", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # "user:<user_id>" actors: user ids are up to 255 characters
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column(
            "actor",
            existing_type=sa.String(length=80),
            type_=sa.String(length=300),
            existing_nullable=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column(
            "actor",
            existing_type=sa.String(length=300),
            type_=sa.String(length=80),
            existing_nullable=False,
        )
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.drop_column("client_access")
    with op.batch_alter_table("end_user_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_end_user_tokens_expires")
        batch_op.drop_index("ix_end_user_tokens_env_user")
    op.drop_table("end_user_tokens")
    with op.batch_alter_table("subject_issuers", schema=None) as batch_op:
        batch_op.drop_index("ix_subject_issuers_issuer")
    op.drop_table("subject_issuers")
