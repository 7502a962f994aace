"""Schema migrations: run Alembic's upgrade to head from code (`entities migrate`).

The migration scripts have one copy, the repository's ``migrations/`` folder
(``alembic upgrade head`` from a checkout reads it through alembic.ini). The
build installs that folder as the package ``entities.migrations``; an editable
install maps the same name onto the folder. ``script_location`` finds them in
either place, and in a bare checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from entities.errors import ConfigurationError


def script_location() -> Path:
    """The folder of the migration scripts: the installed ``entities.migrations`` package,
    else ``migrations/`` beside the ``entities`` folder of a checkout."""
    try:
        spec = importlib.util.find_spec("entities.migrations")
    except ImportError:
        spec = None
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise ConfigurationError(
        "the schema migrations are missing: this copy of celery-entities has neither the "
        f"entities.migrations package nor {checkout}; reinstall it"
    )


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the bundled migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
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
