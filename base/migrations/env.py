"""Alembic environment: runs on the connection base.db.migrate hands over."""

from __future__ import annotations

from alembic import context

from base.db import Base

config = context.config
target_metadata = Base.metadata  # the revisions say it all; no model module is imported


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER via table copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through base.db.migrate(engine_or_url)")
run_migrations(connection)
