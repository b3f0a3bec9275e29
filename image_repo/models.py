"""Catalogue tables of the image repository.

``images`` holds one row per image version: the full metadata document plus the columns
matching and visibility need (denormalised so they can be indexed).  Child tables list the
content files (the references that keep blobs alive), the applications, the VOs and
communities, ratings and endorsements.  ``catalogue_sequence`` numbers every change so
in-memory indexes can catch up incrementally.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from base.db import Base
from image_repo.trust import StoredEndorsement


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index("ix_images_os", "os_distro", "os_version"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    base_id: Mapped[str | None] = mapped_column(ForeignKey("images.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    group_name: Mapped[str | None] = mapped_column(String(255), index=True)
    #: permission bits, see image_repo.access (owner r/w, group r/w, others r/w)
    mode: Mapped[int] = mapped_column(SmallInteger)
    content_type: Mapped[str] = mapped_column(String(32))
    content_digest: Mapped[str] = mapped_column(String(128), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    source_url: Mapped[str | None] = mapped_column(Text)
    architecture: Mapped[str | None] = mapped_column(String(32), index=True)
    os_distro: Mapped[str | None] = mapped_column(String(64))
    os_version: Mapped[str | None] = mapped_column(String(64))
    limit_cpus: Mapped[int | None] = mapped_column(Integer)
    limit_memory_mib: Mapped[int | None] = mapped_column(BigInteger)
    limit_disk_gib: Mapped[int | None] = mapped_column(BigInteger)
    limit_runtime_s: Mapped[int | None] = mapped_column(BigInteger)
    deployments: Mapped[int] = mapped_column(Integer, default=0)
    exports: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    change_seq: Mapped[int] = mapped_column(BigInteger, index=True)
    #: the validated metadata document as registered (immutable)
    document: Mapped[dict] = mapped_column(JSON)


class ImageFileRow(Base):
    __tablename__ = "image_files"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    file: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    sha512: Mapped[str] = mapped_column(String(128), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class ImageApplicationRow(Base):
    __tablename__ = "image_applications"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    name_key: Mapped[str] = mapped_column(String(128), index=True)  # lower case
    version: Mapped[str | None] = mapped_column(String(64))


#: image_labels kind of a layered image's row: the value is its base's id
LAYER_BASE = "layer-base"


class ImageLabelRow(Base):
    """VOs (kind 'vo'), communities (kind 'community'), the container runtime (kind
    'runtime') and a layer's base (kind :data:`LAYER_BASE`) of an image."""

    __tablename__ = "image_labels"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)

    __table_args__ = (Index("ix_image_labels_kind_value", "kind", "value"),)


class ImageRatingRow(Base):
    __tablename__ = "image_ratings"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    score: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text)
    rated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ImageEndorsementRow(Base):
    """One endorsement of an image (image_repo.trust): one per image and endorser
    certificate; a newer endorsement by the same certificate replaces the older one."""

    __tablename__ = "image_endorsements"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    #: SHA-256 of the endorser certificate (DER), hex
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    endorser: Mapped[str] = mapped_column(Text)  # subject DN, RFC 4514
    certificate: Mapped[str] = mapped_column(Text)  # PEM
    statement: Mapped[str] = mapped_column(Text)  # canonical JSON, as signed
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    signed: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attached_by: Mapped[str] = mapped_column(String(255))  # the user who attached it

    def stored(self) -> StoredEndorsement:
        return StoredEndorsement(
            endorser=self.endorser, fingerprint=self.fingerprint, certificate=self.certificate,
            statement=self.statement, signature=bytes(self.signature),
            signed=_utc(self.signed), expires=_utc(self.expires),
            attached_by=self.attached_by)


def _utc(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes (that are UTC)."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


class SequenceRow(Base):
    """Named counters; 'catalogue' numbers catalogue changes."""

    __tablename__ = "catalogue_sequence"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class SubscriptionRow(Base):
    """The state of one image-list subscription (image_repo.subscriptions): the list last
    accepted, until when it holds, and the outcome of the last refresh."""

    __tablename__ = "image_subscriptions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    list_identifier: Mapped[str | None] = mapped_column(String(255))
    list_version: Mapped[str | None] = mapped_column(String(64))
    endorser: Mapped[str | None] = mapped_column(Text)  # signer DN, one-line form
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refreshed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)  # why the last refresh failed


class PendingUploadRow(Base):
    """A registration waiting for its files (image_repo.uploads): kept across restarts with
    the files received so far (in the store's ``uploads/<id>/``)."""

    __tablename__ = "pending_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    caller: Mapped[dict] = mapped_column(JSON)  # user, groups, vos, admin
    document: Mapped[dict] = mapped_column(JSON)  # validated, registered as it is
    key: Mapped[str] = mapped_column(String(128))  # digest of the comparable document
    expected: Mapped[dict] = mapped_column(JSON)  # file name -> index in origin.content
    received: Mapped[list] = mapped_column(JSON, default=list)  # file names verified
    expires: Mapped[float] = mapped_column(Float)  # seconds since the epoch
