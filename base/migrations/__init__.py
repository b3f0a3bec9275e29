"""Alembic migrations of gridvm's one schema (see base.db.migrate)."""
