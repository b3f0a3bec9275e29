"""Image catalogue: images, their files, applications, labels, ratings; change sequence.

Revision ID: 0001_images
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_images"
down_revision = None
branch_labels = None
depends_on = None


def _image_child(name: str, *columns: sa.Column, primary: tuple[str, ...]) -> None:
    op.create_table(
        name,
        sa.Column("image_id", sa.String(32), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(["image_id"], ["images.id"],
                                name=op.f(f"fk_{name}_image_id_images")),
        sa.PrimaryKeyConstraint("image_id", *primary, name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    sequence = op.create_table(
        "catalogue_sequence",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_catalogue_sequence")),
    )
    op.bulk_insert(sequence, [{"name": "catalogue", "value": 0}])
    op.create_table(
        "images",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=True),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("content_digest", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=True),
        sa.Column("architecture", sa.String(32), nullable=True),
        sa.Column("os_distro", sa.String(64), nullable=True),
        sa.Column("os_version", sa.String(64), nullable=True),
        sa.Column("limit_cpus", sa.Integer(), nullable=True),
        sa.Column("limit_memory_mib", sa.BigInteger(), nullable=True),
        sa.Column("limit_disk_gib", sa.BigInteger(), nullable=True),
        sa.Column("limit_runtime_s", sa.BigInteger(), nullable=True),
        sa.Column("deployments", sa.Integer(), nullable=False),
        sa.Column("exports", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["base_id"], ["images.id"], name=op.f("fk_images_base_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_images_name_version")),
    )
    for column in ("architecture", "change_seq", "content_digest", "group_name", "name",
                   "owner", "status"):
        op.create_index(op.f(f"ix_images_{column}"), "images", [column])
    op.create_index("ix_images_os", "images", ["os_distro", "os_version"])

    _image_child(
        "image_files",
        sa.Column("file", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("sha512", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        primary=("file",),
    )
    op.create_index(op.f("ix_image_files_sha512"), "image_files", ["sha512"])
    _image_child(
        "image_applications",
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("name_key", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        primary=("position",),
    )
    op.create_index(op.f("ix_image_applications_name_key"), "image_applications", ["name_key"])
    _image_child(
        "image_labels",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        primary=("kind", "value"),
    )
    op.create_index("ix_image_labels_kind_value", "image_labels", ["kind", "value"])
    _image_child(
        "image_ratings",
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("rated", sa.DateTime(timezone=True), nullable=False),
        primary=("user",),
    )


def downgrade() -> None:
    for table in ("image_ratings", "image_labels", "image_applications", "image_files",
                  "images", "catalogue_sequence"):
        op.drop_table(table)
