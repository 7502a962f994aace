"""Schema migrations: fresh to head, down to base and back, and every older revision to head.

Runs on SQLite files and on throwaway Postgres databases. The revision list
comes from Alembic's script directory, so new revisions are covered as they
are added.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from entities.migrate import alembic_config, downgrade, upgrade
from entities.store import SQLStore
from entities.store import schema as t
from tests.databases import scratch_postgres, sqlite_url

ROOT = Path(__file__).resolve().parent.parent
TABLES = {table.name for table in t.metadata.sorted_tables}

pytestmark = pytest.mark.no_services


def revisions() -> list[str]:
    """Every revision of the script directory, oldest first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    """What Alembic's autogenerate finds between the database and entities.store.schema."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), t.metadata))
    finally:
        engine.dispose()


def assert_at_head(url: str) -> None:
    assert tables(url) == TABLES
    store = SQLStore(url)
    try:
        store.check_schema()
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each kind."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        with scratch_postgres("entities_migrations") as url:
            yield url


def test_the_code_expects_the_single_head_revision() -> None:
    """Given the script directory, then it has one head and the code expects exactly that one."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == [t.HEAD_REVISION]
    assert revisions()[-1] == t.HEAD_REVISION


def test_a_fresh_database_migrates_to_head_matching_the_code(empty_database: str) -> None:
    """Given an empty database, when migrated, then its tables match the code's schema."""
    upgrade(empty_database)
    assert_at_head(empty_database)
    assert schema_differences(empty_database) == []


def test_downgrade_to_base_and_upgrade_again(empty_database: str) -> None:
    """Given a database at head, when downgraded to base, then no table is left; then up again."""
    upgrade(empty_database)
    downgrade(empty_database, "base")
    assert tables(empty_database) == set()
    upgrade(empty_database)
    assert_at_head(empty_database)


def test_upgrading_twice_is_harmless(empty_database: str) -> None:
    """Given a database at head, when migrated again, then nothing changes and nothing fails."""
    upgrade(empty_database)
    upgrade(empty_database)
    assert_at_head(empty_database)


@pytest.mark.parametrize("start", ["base", *revisions()[:-1]])
def test_every_older_revision_upgrades_to_head(start: str, empty_database: str) -> None:
    """Given a database at an older revision (or none), when migrated, then it reaches head."""
    if start != "base":
        upgrade(empty_database, start)
    upgrade(empty_database)
    assert_at_head(empty_database)


@pytest.mark.parametrize("start", revisions())
def test_every_revision_downgrades_one_step_and_back(start: str, empty_database: str) -> None:
    """Given a database at each revision, when stepped down one and up again, then it is at head."""
    upgrade(empty_database, start)
    downgrade(empty_database, "-1")
    upgrade(empty_database)
    assert_at_head(empty_database)


def test_alembic_upgrade_head_from_a_checkout_uses_the_environment() -> None:
    """Given ENTITIES_DATABASE_URL, when `alembic upgrade head` runs in a checkout, it migrates."""
    with scratch_postgres("entities_alembic_cli") as url:
        env = {**os.environ, "ENTITIES_DATABASE_URL": url}
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert_at_head(url)
