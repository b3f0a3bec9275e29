"""Alembic environment: runs on the connection image_repo.db.migrate hands over."""

from __future__ import annotations

from alembic import context

from image_repo.db import load_models

config = context.config
target_metadata = load_models()


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
    raise RuntimeError("run migrations through image_repo.db.migrate(engine_or_url)")
run_migrations(connection)
