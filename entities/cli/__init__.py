"""The ``entities`` command: a development worker on embedded servers, and the schema.

Each command lives in its own module of this package; a new command is a
click command in a new module plus one ``main.add_command`` line below.
"""

from __future__ import annotations

import click

from entities.cli.dev import dev, env
from entities.cli.migrate import migrate


@click.group(name="entities", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-entities", prog_name="entities")
def main() -> None:
    """Durable entities (virtual actors) on Celery, Redis and Postgres.

    Settings come from the ENTITIES_* environment variables (see the README).
    """


main.add_command(dev)
main.add_command(env)
main.add_command(migrate)

__all__ = ["main"]
