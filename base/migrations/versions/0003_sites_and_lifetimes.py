"""UNICORE sites (per-user target system handles) and job lifetimes.

Revision ID: 0003_sites_and_lifetimes
Revises: 0002_target_systems
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sites_and_lifetimes"
down_revision = "0002_target_systems"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("termination", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
    )
    op.create_index(op.f("ix_sites_owner"), "sites", ["owner"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("site_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("termination", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("termination")
        batch.drop_column("site_id")
    op.drop_table("sites")
