"""Tables for target systems and jobs, on gridvm's one schema (``base.db.Base``).

A row is a snapshot taken at every state change: enough to re-adopt a running VM, reconnect
its TSI link and resume its jobs after a server restart.
"""

from __future__ import annotations

from sqlalchemy import JSON, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from base.db import Base


class InstanceRow(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    image_id: Mapped[str] = mapped_column(String(32))
    image_name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    host_port: Mapped[int | None] = mapped_column(Integer)
    callback_port: Mapped[int | None] = mapped_column(Integer)
    domain: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(64))  #: its hypervisor host's name
    instance_cert: Mapped[str | None] = mapped_column(Text)
    history: Mapped[list] = mapped_column(JSON, default=list)
    updated: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    caller: Mapped[dict] = mapped_column(JSON)
    instance_id: Mapped[str | None] = mapped_column(String(32), index=True)
    image: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[dict] = mapped_column(JSON)
    bssid: Mapped[str | None] = mapped_column(String(64))
    workdir: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    ended_by: Mapped[str | None] = mapped_column(String(32))
    storage: Mapped[str] = mapped_column(Text)
    log: Mapped[list] = mapped_column(JSON, default=list)
    history: Mapped[list] = mapped_column(JSON, default=list)
    rejections: Mapped[list] = mapped_column(JSON, default=list)
    submitted: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    site_id: Mapped[str | None] = mapped_column(String(32))  #: the UNICORE site it went to
    termination: Mapped[float | None] = mapped_column(Float)  #: destroyed after this time


class SiteRow(Base):
    """A UNICORE site: a user's handle that accepts jobs (``/sites/{id}``)."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    created: Mapped[float] = mapped_column(Float)
    termination: Mapped[float | None] = mapped_column(Float)
