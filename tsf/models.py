"""The site service's own table, on gridvm's one schema (``base.db.Base``)."""

from __future__ import annotations

from sqlalchemy import Float, String
from sqlalchemy.orm import Mapped, mapped_column

from base.db import Base


class DashboardSessionRow(Base):
    """A dashboard login: kept so that a site restart logs nobody out.  ``id`` is the SHA-256
    of the session cookie's value, never the value itself."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))  #: the user name
    csrf: Mapped[str] = mapped_column(String(64))
    expires: Mapped[float] = mapped_column(Float, index=True)  #: epoch seconds
