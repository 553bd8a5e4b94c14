"""lifecycle signals: refresh-token expiry, health probes, provider event ids

Revision ID: 0003_lead20_lifecycle_signals
Revises: 0003_w12b_long_urls_ui_sign_outs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_lead20_lifecycle_signals"
down_revision = "0003_w12b_long_urls_ui_sign_outs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refresh_token_expires_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("expiry_warn_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("expiry_warned_for", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("probe_due_at", sa.Double(), nullable=True))
        batch_op.create_index("ix_grants_expiry_warn", ["status", "expiry_warn_at"])
        batch_op.create_index("ix_grants_probe_due", ["status", "probe_due_at"])
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_events_secret_ct", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("health_probe_interval", sa.Integer(), nullable=True))
    op.create_table(
        "provider_event_ids",
        sa.Column("environment_id", sa.String(36), nullable=False),
        sa.Column("integration_id", sa.String(63), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(
            "environment_id", "integration_id", "event_id", name="pk_provider_event_ids"
        ),
    )
    op.create_index("ix_provider_event_ids_expires", "provider_event_ids", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_provider_event_ids_expires", table_name="provider_event_ids")
    op.drop_table("provider_event_ids")
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.drop_column("health_probe_interval")
        batch_op.drop_column("provider_events_secret_ct")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_probe_due")
        batch_op.drop_index("ix_grants_expiry_warn")
        batch_op.drop_column("probe_due_at")
        batch_op.drop_column("expiry_warned_for")
        batch_op.drop_column("expiry_warn_at")
        batch_op.drop_column("refresh_token_expires_at")
