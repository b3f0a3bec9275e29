"""Dashboard sessions survive a site restart.

Revision ID: 0006_dashboard_sessions
Revises: 0005_subscriptions
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_dashboard_sessions"
down_revision = "0005_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_sessions")),
    )
    op.create_index(op.f("ix_dashboard_sessions_expires"), "dashboard_sessions", ["expires"])


def downgrade() -> None:
    op.drop_index(op.f("ix_dashboard_sessions_expires"), table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
