"""What every operating command shares: JSON or rich output, error translation, entity modules."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

from entities.errors import EntityError

#: The ``--json`` flag of every command whose output a script may read.
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON instead of a table (for scripts)."
)


def console() -> Console:
    """A rich console on the current stdout (so CliRunner captures it); no colour when piped."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def to_jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO 8601 text and dataclasses as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def echo_json(value: Any) -> None:
    """Prints ``value`` as indented JSON, keys in their order (an entity's state as stored)."""
    click.echo(json.dumps(to_jsonable(value), indent=2, default=str))


def when(value: dt.datetime | None) -> str:
    """A timestamp for a table: UTC, to the millisecond."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


@contextmanager
def entity_errors() -> Iterator[None]:
    """Turns the project's errors into a one-line message and exit status 1."""
    try:
        yield
    except EntityError as exc:
        raise click.ClickException(str(exc)) from exc


def import_entity_modules() -> None:
    """Imports ENTITIES_MODULES, so entity classes are known by their type names."""
    from entities.registry import import_modules
    from entities.settings import get_settings

    import_modules(get_settings().modules)
