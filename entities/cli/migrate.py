"""``entities migrate``: create or upgrade the schema in ENTITIES_DATABASE_URL."""

from __future__ import annotations

import click
import sqlalchemy as sa


def safe_url(database_url: str) -> str:
    """``database_url`` with its password hidden, for printing."""
    try:
        return sa.engine.make_url(database_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<malformed URL>"


def apply_migrations(database_url: str, revision: str = "head") -> str:
    """Brings the schema of ``database_url`` to ``revision``; returns a line saying what it did.

    Raises ``click.ClickException`` with the driver's message if the database
    cannot be reached or migrated.
    """
    from entities.migrate import current_revision, upgrade

    where = safe_url(database_url)
    try:
        before = current_revision(database_url)
        upgrade(database_url, revision)
        after = current_revision(database_url)
    except sa.exc.SQLAlchemyError as err:
        reason = getattr(err, "orig", None) or err
        raise click.ClickException(f"could not migrate {where}: {reason}") from err
    if before == after:
        return f"schema of {where} is already at revision {after}; nothing to do"
    return f"schema of {where} upgraded from {before or 'empty'} to revision {after}"


@click.command()
@click.option(
    "--database-url",
    metavar="URL",
    help="SQLAlchemy URL to migrate. Default: ENTITIES_DATABASE_URL, else the database "
    "of the `entities dev` running here, else the SQLite file in ./.entities/.",
)
@click.option("--revision", default="head", show_default=True, help="Alembic revision to reach.")
def migrate(database_url: str | None, revision: str) -> None:
    """Create or upgrade the entity tables in ENTITIES_DATABASE_URL.

    Safe to run again: an up-to-date schema is left as it is. Workers and
    clients refuse to start on a missing or older schema until this has run.
    """
    if database_url is None:
        from entities.cli._deployment import use

        database_url = use(creates=True).database_url
    click.echo(apply_migrations(database_url, revision))
