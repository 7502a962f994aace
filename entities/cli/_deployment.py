"""Which deployment an ``entities`` command talks to, settled once when the command starts.

1. ENTITIES_DATABASE_URL or ENTITIES_BROKER_URL is set: the environment, as it is.
2. Else the ``entities dev`` running in this directory (``ENTITIES_HOME``,
   default ``./.entities``): the settings it recorded (``embedded.save_env``),
   with the environment's other ENTITIES_* on top. The command says so on stderr.
3. Else the library's defaults (an SQLite file and the embedded broker in
   ``./.entities/``); the command names them on stderr, with how to point it
   elsewhere.

Invariant: no command but ``entities dev`` and ``entities migrate`` creates
anything. A command that meets a missing SQLite file stops with a message
saying where it looked, before any engine could create the file or its folder;
no command starts the embedded broker (an unreachable one is an error that
says so, see ``entities.cli._output.entity_errors``).

Invariant: a command's deployment lasts as long as the command. When it ends,
the process's settings and store are the ones it had before (a store the
command opened is closed), so a command run inside a longer process (a test,
an embedding app) leaves no other deployment behind for the process's later work.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import click
import sqlalchemy as sa

from entities import embedded
from entities.cli._output import safe_broker
from entities.cli.migrate import safe_url
from entities.settings import DEFAULT_HOME, Settings, embedded_broker_url, from_env

#: The variables that point a command at a deployment; either one set means "use the environment".
POINTERS = ("ENTITIES_DATABASE_URL", "ENTITIES_BROKER_URL")

HOW_TO_POINT = (
    "set ENTITIES_DATABASE_URL and ENTITIES_BROKER_URL to your deployment's, "
    "or start `entities dev` in this directory"
)


@dataclasses.dataclass(frozen=True)
class Deployment:
    """The settings a command uses, where they came from, and what to tell the user."""

    settings: Settings
    source: str  # "environment", "dev" or "defaults"
    note: str | None = None
    situation: str = ""


def find(env: Mapping[str, str] | None = None) -> Deployment:
    """The deployment the environment ``env`` (default: ``os.environ``) points at; looks only."""
    env = dict(os.environ if env is None else env)
    if any(env.get(name) for name in POINTERS):
        return Deployment(from_env(env), "environment")
    home = Path(env.get("ENTITIES_HOME") or DEFAULT_HOME).resolve()
    recorded = embedded.load_env(home)
    stale = ""
    if recorded is not None:
        if _servers_run(home, recorded):
            settings = from_env({**recorded, **{k: v for k, v in env.items() if v}})
            note = (
                f"entities: using the `entities dev` running in {home} "
                f"(database {safe_url(settings.database_url)}, "
                f"broker {safe_broker(settings.broker_url)})"
            )
            return Deployment(settings, "dev", note)
        stale = " (the `entities dev` recorded there has stopped)"
    settings = from_env(env)
    situation = (
        f"no ENTITIES_DATABASE_URL or ENTITIES_BROKER_URL is set and no `entities dev` runs "
        f"in {home}{stale}"
    )
    note = (
        f"entities: {situation}; using the defaults: database "
        f"{safe_url(settings.database_url)}, broker {safe_broker(settings.broker_url)}. "
        f"To use another deployment, {HOW_TO_POINT}."
    )
    return Deployment(settings, "defaults", note, situation)


def _servers_run(home: Path, recorded: Mapping[str, str]) -> bool:
    """Whether the embedded servers a recorded ``entities dev`` uses still run."""
    broker = recorded.get("ENTITIES_BROKER_URL")
    if broker == embedded_broker_url(str(home)) and not embedded.redis_running(home):
        return False
    database = recorded.get("ENTITIES_DATABASE_URL", "")
    try:
        url = sa.engine.make_url(database)
    except sa.exc.ArgumentError:
        return True
    socket = str(url.query.get("host") or "")
    embedded_pg = url.get_backend_name() == "postgresql" and url.host is None
    if embedded_pg and (home / "pgdata").is_dir() and socket:
        return embedded.postgres_running(home)
    return True


def missing_database(deployment: Deployment) -> str | None:
    """Why there is no database to look at (an SQLite file that does not exist), or None."""
    url = sa.engine.make_url(deployment.settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(str(url.database))
    if path.exists():
        return None
    if deployment.source == "environment":
        return (
            f"no database at {path}: ENTITIES_DATABASE_URL names an SQLite file that does "
            "not exist; `entities migrate` creates it"
        )
    return (
        f"{deployment.situation}, and the default database {path} does not exist: nothing to "
        f"look at (nothing was created). To use another deployment, {HOW_TO_POINT}."
    )


def use(creates: bool = False) -> Settings:
    """Settles the deployment of the running command (once per invocation) and installs its
    settings for this process. Unless ``creates``, a missing SQLite database stops the
    command (ClickException) before anything is created."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.find_root().meta if ctx is not None else {}
    settled = meta.get("entities.deployment")
    if settled is None:
        if ctx is not None:
            ctx.find_root().call_on_close(_restorer())
        settled = find()
        why = None if creates else missing_database(settled)
        if why is not None:
            raise click.ClickException(why)
        if settled.note:
            click.echo(settled.note, err=True)
        meta["entities.deployment"] = settled
    _install(settled.settings)
    return settled.settings


def _restorer() -> Callable[[], None]:
    """Puts back the process's settings and store as they are now (called when the command
    ends: a command run in a process that goes on, such as a test's or an embedding app's,
    leaves its deployment behind in nothing process-wide)."""
    from entities.client import set_store
    from entities.settings import installed, reinstall

    settings = installed()
    store = set_store(None)
    set_store(store)

    def restore() -> None:
        opened = set_store(store)
        if opened is not None and opened is not store:
            opened.close()
        reinstall(settings)

    return restore


def _install(settings: Settings) -> None:
    """Makes ``settings`` the process's, dropping a store opened for other settings."""
    from entities.client import set_store
    from entities.settings import configure, get_settings

    if get_settings() != settings:
        configure(settings)
        set_store(None)
