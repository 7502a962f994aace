"""Schema migrations: fresh to head, down to base and back, and every older revision to head.

Runs on SQLite files and on throwaway Postgres databases. The revision list
comes from Alembic's script directory, so new revisions are covered as they
are added.
"""

from __future__ import annotations

import datetime as dt
import json
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
from sqlalchemy.dialects.postgresql import JSONB

from entities.migrate import alembic_config, downgrade, upgrade
from entities.store import CommitBatch, SQLStore, Write
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


# -- 0004: exact JSON text ------------------------------------------------------------

BEFORE_EXACT = "0003_commit_fences"
OLD_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
OLD = sa.MetaData()
OLD_SNAPSHOTS = sa.Table(
    "entity_snapshots",
    OLD,
    sa.Column("entity_type", sa.String),
    sa.Column("entity_id", sa.String),
    sa.Column("version", sa.BigInteger),
    sa.Column("vsn", sa.Integer),
    sa.Column("state", OLD_JSON),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
OLD_PROCESSED = sa.Table(
    "entity_processed",
    OLD,
    sa.Column("message_id", sa.String),
    sa.Column("entity_type", sa.String),
    sa.Column("entity_id", sa.String),
    sa.Column("partition", sa.Integer),
    sa.Column("ok", sa.Boolean),
    sa.Column("reply", OLD_JSON),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
)
OLD_ALARMS = sa.Table(
    "entity_alarms",
    OLD,
    sa.Column("entity_type", sa.String),
    sa.Column("entity_id", sa.String),
    sa.Column("name", sa.String),
    sa.Column("fire_at", sa.DateTime(timezone=True)),
    sa.Column("payload", OLD_JSON),
    sa.Column("scheduling_id", sa.String),
    sa.Column("status", sa.String),
    sa.Column("attempts", sa.Integer),
)
OLD_OUTBOX = sa.Table(
    "entity_outbox",
    OLD,
    sa.Column("message_id", sa.String),
    sa.Column("partition", sa.Integer),
    sa.Column("seq", sa.BigInteger),
    sa.Column("entity_type", sa.String),
    sa.Column("entity_id", sa.String),
    sa.Column("msg", OLD_JSON),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)
STATE = {"pear": 1, "apple": {"b": [1, 2.5, None], "a": "ü"}, "big": 2**70}
NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)


def write_old_rows(url: str) -> None:
    """Rows as code before 0004 wrote them, through jsonb (Postgres) or JSON (SQLite)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                OLD_SNAPSHOTS.insert().values(
                    entity_type="t", entity_id="a", version=1, vsn=1, state=STATE, updated_at=NOW
                )
            )
            conn.execute(
                OLD_PROCESSED.insert().values(
                    message_id="m",
                    entity_type="t",
                    entity_id="a",
                    partition=0,
                    ok=True,
                    reply=7,
                    processed_at=NOW,
                )
            )
            conn.execute(
                OLD_ALARMS.insert().values(
                    entity_type="t",
                    entity_id="a",
                    name="n",
                    fire_at=NOW,
                    payload=STATE,
                    scheduling_id="s",
                    status="scheduled",
                    attempts=0,
                )
            )
            conn.execute(
                OLD_OUTBOX.insert().values(
                    message_id="o",
                    partition=0,
                    seq=1,
                    entity_type="t",
                    entity_id="a",
                    msg={"op": "x", "args": [STATE]},
                    created_at=NOW,
                )
            )
    finally:
        engine.dispose()


def read_rows(url: str) -> tuple[object, ...]:
    """The four rows as the store reads them."""
    store = SQLStore(url)
    try:
        snapshot = store.load("t", "a")
        alarm = store.get_alarm("t", "a", "n")
        assert snapshot is not None and alarm is not None
        return (
            snapshot.state,
            store.processed(["m"])["m"].reply,
            alarm.payload,
            [m.msg for m in store.pending_outbox(0)],
        )
    finally:
        store.close()


def read_old_rows(url: str) -> tuple[object, ...]:
    """The four rows as code before 0004 read them."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(sa.select(OLD_SNAPSHOTS.c.state)).scalar_one(),
                conn.execute(sa.select(OLD_PROCESSED.c.reply)).scalar_one(),
                conn.execute(sa.select(OLD_ALARMS.c.payload)).scalar_one(),
                list(conn.execute(sa.select(OLD_OUTBOX.c.msg)).scalars()),
            )
    finally:
        engine.dispose()


def json_column_types(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            found = set()
            for table, column in (
                ("entity_snapshots", "state"),
                ("entity_processed", "reply"),
                ("entity_alarms", "payload"),
                ("entity_outbox", "msg"),
            ):
                types = {c["name"]: c["type"] for c in inspector.get_columns(table)}
                found.add(type(types[column]).__name__.upper())
            return found
    finally:
        engine.dispose()


def test_0004_carries_json_rows_over_and_back(empty_database: str) -> None:
    """Given rows written before 0004 in all four JSON columns, when upgraded, then they
    read back equal (keys in whatever order jsonb left them) from exact-text columns, new
    writes keep their order; and when downgraded, the rows are still there, equal."""
    upgrade(empty_database, BEFORE_EXACT)
    write_old_rows(empty_database)
    expected = (STATE, 7, STATE, [{"op": "x", "args": [STATE]}])

    upgrade(empty_database)
    assert read_rows(empty_database) == expected
    assert json_column_types(empty_database) == (
        {"JSON"} if empty_database.startswith("postgresql") else {"TEXT"}
    )
    store = SQLStore(empty_database)
    try:
        ordered = {"pear": 1.0, "apple": -0.0}
        store.commit(CommitBatch(0, None, writes=[Write("t", "b", 0, 1, ordered)]))
        loaded = store.load("t", "b")
        assert loaded is not None and json.dumps(loaded.state) == json.dumps(ordered)
        with store.engine.begin() as conn:  # leave only what 0003 had, to compare
            conn.execute(sa.delete(t.snapshots).where(t.snapshots.c.entity_id == "b"))
    finally:
        store.close()

    downgrade(empty_database, BEFORE_EXACT)
    assert read_old_rows(empty_database) == expected
    assert json_column_types(empty_database) == (
        {"JSONB"} if empty_database.startswith("postgresql") else {"JSON"}
    )


def test_0004_stopped_half_way_finishes_when_run_again() -> None:
    """Given a Postgres upgrade to 0004 that converted one column and stopped (each column
    is its own transaction), when the upgrade runs again, then it reaches head."""
    with scratch_postgres("entities_migrations") as url:
        upgrade(url, BEFORE_EXACT)
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE entity_snapshots ALTER COLUMN state TYPE json"))
        finally:
            engine.dispose()
        upgrade(url)
        assert_at_head(url)
        assert json_column_types(url) == {"JSON"}
