"""Fixtures of the site tests that boot no VM: the catalogue on SQLite and PostgreSQL and the
test PKI of tests/image_repo."""

from tests.image_repo.conftest import database_url, pki  # noqa: F401  (fixtures)
