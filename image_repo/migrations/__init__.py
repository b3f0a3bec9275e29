"""Alembic migrations of gridvm's one schema (see image_repo.db.migrate)."""
