"""What every operating command shares: JSON or rich output, error translation, entity modules."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from entities.errors import EntityError
from entities.settings import Settings

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
    """The boundary of every operating command: settles which deployment it talks to
    (``entities.cli._deployment.use``: the environment, the ``entities dev`` of this
    directory, or the named defaults; nothing is created by looking), then turns the
    project's errors and an unreachable broker into a one-line message and exit status 1."""
    import redis

    from entities.cli._deployment import use

    settings = use()
    try:
        yield
    except EntityError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.RedisError as exc:
        raise click.ClickException(broker_trouble(settings, exc)) from exc


def broker_trouble(settings: Settings, exc: Exception) -> str:
    """What went wrong talking to the broker of ``settings``, and what to do (no password)."""
    if settings.embedded_broker:
        return (
            f"the embedded broker in {Path(settings.home).resolve()} is not running ({exc}); "
            "start `entities dev` in this directory, or set ENTITIES_BROKER_URL"
        )
    return f"cannot reach the broker {safe_broker(settings.broker_url)}: {exc}"


def safe_broker(url: str) -> str:
    """A broker URL with its password hidden, for printing (Sentinel lists included)."""
    from entities.broker_errors import masked_url

    return masked_url(url)


def import_entity_modules() -> None:
    """Imports ENTITIES_MODULES, so entity classes are known by their type names."""
    from entities.registry import import_modules
    from entities.settings import get_settings

    import_modules(get_settings().modules)
