"""``entities alarms``: an entity's alarms, the alarms kept unfired, and retrying one."""

from __future__ import annotations

import json

import click
from rich.table import Table

from entities.cli._known import require_known
from entities.cli._output import console, echo_json, entity_errors, json_option, when
from entities.store import Alarm


@click.command(name="alarms")
@click.argument("entity_type", required=False)
@click.argument("entity_id", required=False)
@click.option(
    "--failed",
    is_flag=True,
    help="List alarms kept unfired (failed or skipped), oldest first; ENTITY_TYPE filters.",
)
@click.option("--retry", metavar="NAME", help="Schedule the failed or skipped alarm NAME again.")
@click.option("--limit", default=100, show_default=True, help="Most alarms listed with --failed.")
@json_option
def alarms(
    entity_type: str | None,
    entity_id: str | None,
    failed: bool,
    retry: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show alarms: one entity's (ENTITY_TYPE ENTITY_ID), or --failed ones; --retry one.

    \b
    entities alarms counter user-1               every alarm of one entity
    entities alarms --failed [counter]           alarms whose handler kept raising, or skipped
    entities alarms counter user-1 --retry tick  fire a failed alarm again, now
    """
    from entities.client import failed_alarms, get_store, retry_alarm

    with entity_errors():
        if retry is not None:
            if entity_type is None or entity_id is None:
                raise click.UsageError("--retry NAME needs ENTITY_TYPE and ENTITY_ID")
            again = retry_alarm(entity_type, entity_id, retry)
            if as_json:
                echo_json({"retried": again})
            elif again:
                click.echo(f"alarm {retry!r} of {entity_type} {entity_id!r} scheduled to fire now")
            if not again:
                raise click.ClickException(
                    f"{entity_type} {entity_id!r} has no failed or skipped alarm {retry!r}"
                )
            return
        if failed:
            if entity_id is not None:
                raise click.UsageError("--failed takes at most ENTITY_TYPE")
            found = failed_alarms(entity_type, limit=limit)
        elif entity_type is None or entity_id is None:
            raise click.UsageError("give ENTITY_TYPE and ENTITY_ID, or --failed")
        else:
            found = get_store().list_alarms(entity_type, entity_id)
        if not found and entity_type is not None:
            require_known(entity_type)
    _show(found, as_json)


def _show(found: list[Alarm], as_json: bool) -> None:
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("no alarms")
        return
    table = Table("type", "id", "alarm", "fires at", "status", "attempts", "payload", "last error")
    for a in found:
        table.add_row(
            a.entity_type,
            a.entity_id,
            a.name,
            when(a.fire_at),
            a.status,
            str(a.attempts),
            json.dumps(a.payload, default=str),
            a.last_error or "",
        )
    console().print(table)
