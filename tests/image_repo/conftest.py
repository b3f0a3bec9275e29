"""Fixtures: a catalogue per test on SQLite and on PostgreSQL (a fresh schema each time)."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from sqlalchemy import text

from base.db import make_engine, sqlite_url
from base.identity import Caller
from image_repo.repository import ImageRepository

from .examples import builder_document, write_files

ALICE = Caller.of("alice", groups=["physics"], vos=["atlas"])
BOB = Caller.of("bob", groups=["physics"], vos=["cms"])
CAROL = Caller.of("carol", groups=["chemistry"])
ADMIN = Caller.of("root", admin=True)


def postgres_base_url() -> str:
    url = os.environ.get("GRIDVM_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but GRIDVM_TEST_POSTGRES_URL is not set")
        pytest.skip("GRIDVM_TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """A URL of an empty catalogue database, private to this test."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "catalogue.sqlite")
        return
    base = postgres_base_url()
    schema = f"gridvm_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def repo(database_url, tmp_path):
    repository = ImageRepository(database_url, tmp_path / "store")
    yield repository
    repository.close()


@pytest.fixture(scope="session")
def pki():
    """A CA, endorsers it issued (RSA, ECDSA, Ed25519), a stranger, an impostor, an expired
    endorser (tests/image_repo/pki.py); made once per session (RSA keys take a while)."""
    from .pki import build_pki

    return build_pki()


@pytest.fixture
def build_dir(tmp_path):
    """What `gridvm catalogue build` leaves behind: metadata.json, vmlinuz, initrd.img."""
    directory = tmp_path / "build"
    write_files(directory, {"vmlinuz": b"kernel-bytes", "initrd.img": b"initrd-bytes"})
    (directory / "metadata.json").write_text(json.dumps(builder_document(), indent=2))
    return directory
