"""Registrations waiting for their files survive a restart.

Revision ID: 0008_pending_uploads
Revises: 0007_instance_host
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_pending_uploads"
down_revision = "0007_instance_host"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_uploads",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("caller", sa.JSON(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("expected", sa.JSON(), nullable=False),
        sa.Column("received", sa.JSON(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_uploads")),
    )
    op.create_index(op.f("ix_pending_uploads_owner"), "pending_uploads", ["owner"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pending_uploads_owner"), table_name="pending_uploads")
    op.drop_table("pending_uploads")
