"""An instance's row names the hypervisor host it runs on.

A restarted site whose host is unreachable at its start waits for that host (within the
placement grace period) instead of ending the host's instances at once.

Revision ID: 0007_instance_host
Revises: 0006_dashboard_sessions
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_instance_host"
down_revision = "0006_dashboard_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("host", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("host")
