"""The ``entities`` command: a development worker on embedded servers, and the schema.

Each command lives in its own module of this package; a new command is a
click command in a new module plus one ``main.add_command`` line below.
"""

from __future__ import annotations

import click

from entities.cli.alarms import alarms
from entities.cli.dead_letters import dead_letters
from entities.cli.dev import dev, env
from entities.cli.entity import inspect_entity, ls
from entities.cli.migrate import migrate
from entities.cli.pause import pause, resume
from entities.cli.stats import stats
from entities.cli.upgrade import upgrade


@click.group(name="entities", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-entities", prog_name="entities")
def main() -> None:
    """Durable entities (virtual actors) on Celery, Redis and Postgres.

    Settings come from the ENTITIES_* environment variables (see the README).
    """


main.add_command(dev)
main.add_command(env)
main.add_command(migrate)
main.add_command(inspect_entity)
main.add_command(ls)
main.add_command(alarms)
main.add_command(dead_letters)
main.add_command(pause)
main.add_command(resume)
main.add_command(stats)
main.add_command(upgrade)

__all__ = ["main"]
