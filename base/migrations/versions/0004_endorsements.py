"""Image endorsements: signed statements by endorsers, one per image and certificate.

Revision ID: 0004_endorsements
Revises: 0003_sites_and_lifetimes
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_endorsements"
down_revision = "0003_sites_and_lifetimes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_endorsements",
        sa.Column("image_id", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("endorser", sa.Text(), nullable=False),
        sa.Column("certificate", sa.Text(), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("signed", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attached_by", sa.String(255), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"],
                                name=op.f("fk_image_endorsements_image_id_images")),
        sa.PrimaryKeyConstraint("image_id", "fingerprint", name=op.f("pk_image_endorsements")),
    )


def downgrade() -> None:
    op.drop_table("image_endorsements")
