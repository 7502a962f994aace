"""Schema migrations: run Alembic's upgrade to head from code (`entities migrate`)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import migrations


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the bundled migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def _ensure_sqlite_dir(database_url: str) -> None:
    if database_url.startswith("sqlite:///"):
        Path(database_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


def current_revision(database_url: str) -> str | None:
    """The schema revision recorded in ``database_url``; None for a database without one."""
    _ensure_sqlite_dir(database_url)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            revision: str | None = MigrationContext.configure(conn).get_current_revision()
            return revision
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Creates or upgrades the schema in ``database_url`` to ``revision``."""
    _ensure_sqlite_dir(database_url)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrades the schema in ``database_url`` to ``revision`` (``base`` drops it all)."""
    command.downgrade(alembic_config(database_url), revision)
