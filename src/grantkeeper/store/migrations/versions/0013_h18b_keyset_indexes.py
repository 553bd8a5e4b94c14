"""(environment_id, id) indexes for key rotation's keyset pagination

Revision ID: 0013_h18b_keyset_indexes
Revises: 0012_h14_token_params
"""

from __future__ import annotations

from alembic import op

revision = "0013_h18b_keyset_indexes"
down_revision = "0012_h14_token_params"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_grants_env_id", "grants"),
    ("ix_connect_sessions_env_id", "connect_sessions"),
    ("ix_webhook_endpoints_env_id", "webhook_endpoints"),
)


def upgrade() -> None:
    for name, table in _INDEXES:
        op.create_index(name, table, ["environment_id", "id"])


def downgrade() -> None:
    for name, table in _INDEXES:
        op.drop_index(name, table_name=table)
