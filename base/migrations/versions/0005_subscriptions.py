"""Image-list subscriptions: the list each accepted last, its expiry, the last refresh.

Revision ID: 0005_subscriptions
Revises: 0004_endorsements
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_subscriptions"
down_revision = "0004_endorsements"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_subscriptions",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("list_identifier", sa.String(255), nullable=True),
        sa.Column("list_version", sa.String(64), nullable=True),
        sa.Column("endorser", sa.Text(), nullable=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_image_subscriptions")),
    )


def downgrade() -> None:
    op.drop_table("image_subscriptions")
