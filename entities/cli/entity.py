"""``entities inspect`` and ``entities ls``: one entity's state, and the ids of a type."""

from __future__ import annotations

import json
from typing import Any

import click
import redis
from rich.table import Table

from entities.cli._known import require_known
from entities.cli._output import (
    broker_trouble,
    console,
    echo_json,
    entity_errors,
    json_option,
    when,
)
from entities.cli.waiting import Waiting, waiting_for
from entities.settings import get_settings


@click.command(name="inspect")
@click.argument("entity_type")
@click.argument("entity_id")
@click.option(
    "--scan",
    default=10_000,
    show_default=True,
    metavar="N",
    help="Most queued and in-flight messages of the partition read to count those waiting.",
)
@json_option
def inspect_entity(entity_type: str, entity_id: str, scan: int, as_json: bool) -> None:
    """Show one entity: committed state, version, vsn, alarms, messages waiting.

    The state is read from the store (the last commit), without waiting
    behind queued messages. "Waiting" counts the messages addressed to the
    entity in its partition queue, in flight (fetched, not yet acknowledged)
    and held by a pause, reading at most --scan entries of the queue.
    """
    from entities.client import get_store, read

    with entity_errors():
        snapshot = read(entity_type, entity_id)
        alarms = get_store().list_alarms(entity_type, entity_id)
        if snapshot is None and not alarms:
            require_known(entity_type)
        pending = _waiting(entity_type, entity_id, scan)
    if as_json:
        echo_json(
            {
                "entity_type": entity_type,
                "entity_id": entity_id,
                "exists": snapshot is not None,
                "state": None if snapshot is None else snapshot.state,
                "version": None if snapshot is None else snapshot.version,
                "vsn": None if snapshot is None else snapshot.vsn,
                "updated_at": None if snapshot is None else snapshot.updated_at,
                "alarms": [_alarm(a) for a in alarms],
                "waiting": pending,
            }
        )
        return
    out = console()
    out.print(f"[bold]{entity_type}[/bold] {entity_id!r}")
    if snapshot is None:
        out.print("no committed state (the next message starts from the defaults)")
    else:
        out.print(
            f"version {snapshot.version}  vsn {snapshot.vsn}  updated {when(snapshot.updated_at)}"
        )
        out.print_json(json.dumps(snapshot.state, default=str))
    if alarms:
        table = Table("alarm", "fires at", "status", "attempts", "payload", title="Alarms")
        for a in alarms:
            table.add_row(
                a.name,
                when(a.fire_at),
                a.status,
                str(a.attempts),
                json.dumps(a.payload, default=str),
            )
        out.print(table)
    else:
        out.print("no alarms")
    out.print(_waiting_line(pending))


def _waiting(entity_type: str, entity_id: str, scan: int) -> Waiting | str:
    """The messages waiting for the entity, or why the broker could not say."""
    try:
        return waiting_for(entity_type, entity_id, scan)
    except redis.RedisError as exc:
        return f"unknown: {broker_trouble(get_settings(), exc)}"


def _alarm(a: Any) -> dict[str, Any]:
    return {
        "name": a.name,
        "fire_at": a.fire_at,
        "status": a.status,
        "attempts": a.attempts,
        "payload": a.payload,
        "last_error": a.last_error,
    }


def _waiting_line(w: Waiting | str) -> str:
    if isinstance(w, str):
        return f"messages waiting: {w}"
    more = "" if w["complete"] else f" (counted in the first {w['scanned']} entries only)"
    return (
        f"messages waiting: {w['queued']} queued, {w['inflight']} in flight, "
        f"{w['held']} held by a pause, on partition {w['partition']}{more}"
    )


@click.command(name="ls")
@click.argument("entity_type")
@click.option("--limit", default=100, show_default=True, help="Most ids to list.")
@click.option("--after", metavar="ID", help="List the ids after this one (the next page).")
@json_option
def ls(entity_type: str, limit: int, after: str | None, as_json: bool) -> None:
    """List the stored ids of ENTITY_TYPE, in order, one page at a time.

    The last id of a page, given to --after, gives the next page.
    """
    from entities.client import list_entities

    if limit < 1:
        raise click.BadParameter("must be at least 1", param_hint="--limit")
    with entity_errors():
        ids = list_entities(entity_type, limit=limit, after=after)
        if not ids and after is None:
            require_known(entity_type)
    next_after = ids[-1] if len(ids) == limit else None
    if as_json:
        echo_json({"entity_type": entity_type, "ids": ids, "next_after": next_after})
        return
    if not ids:
        more = f" after {after!r}" if after else ""
        click.echo(f"no stored {entity_type} entities{more}", err=True)
    for entity_id in ids:
        click.echo(entity_id)
    if next_after is not None:
        click.echo(f"-- more: entities ls {entity_type} --after {next_after!r}", err=True)
