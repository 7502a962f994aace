"""``entities pause`` and ``entities resume``: hold an entity's or a partition's messages."""

from __future__ import annotations

import click

from entities.cli._known import require_known
from entities.cli._output import console, echo_json, entity_errors, json_option


def _target(partition: int | None, entity_type: str | None, entity_id: str | None) -> None:
    if (partition is None) == (entity_type is None and entity_id is None):
        raise click.UsageError("give either --partition N or ENTITY_TYPE ENTITY_ID")
    if partition is None and (entity_type is None or entity_id is None):
        raise click.UsageError("give both ENTITY_TYPE and ENTITY_ID")


@click.command(name="pause")
@click.argument("entity_type", required=False)
@click.argument("entity_id", required=False)
@click.option("--partition", type=int, metavar="N", help="Pause a whole partition.")
@click.option("--list", "show", is_flag=True, help="Show what is paused now.")
@json_option
def pause(
    entity_type: str | None, entity_id: str | None, partition: int | None, show: bool, as_json: bool
) -> None:
    """Hold the messages of one entity (ENTITY_TYPE ENTITY_ID) or of a partition.

    Nothing is lost: held messages stay in Redis, in order, and flow again
    on `entities resume`. The owner stops at its next batch (well under a
    second). A paused entity's partition keeps serving every other entity.
    """
    from entities import control

    with entity_errors():
        if show:
            now = control.paused()
            if as_json:
                echo_json(
                    {
                        "partitions": now.partitions,
                        "entities": [
                            {"entity_type": t, "entity_id": i, "held": n}
                            for (t, i), n in sorted(now.entities.items())
                        ],
                    }
                )
                return
            out = console()
            out.print(f"paused partitions: {now.partitions or 'none'}")
            for (t, i), n in sorted(now.entities.items()):
                out.print(f"paused entity {t} {i!r}: {n} messages held")
            if not now.entities:
                out.print("paused entities: none")
            return
        _target(partition, entity_type, entity_id)
        if partition is not None:
            control.pause_partition(partition)
            what = f"partition {partition}"
        else:
            assert entity_type is not None and entity_id is not None
            require_known(entity_type)
            control.pause_entity(entity_type, entity_id)
            what = f"{entity_type} {entity_id!r}"
    if as_json:
        echo_json({"paused": what})
    else:
        click.echo(f"paused {what}")


@click.command(name="resume")
@click.argument("entity_type", required=False)
@click.argument("entity_id", required=False)
@click.option("--partition", type=int, metavar="N", help="Resume a whole partition.")
@click.option(
    "--wait",
    "wait_s",
    default=10.0,
    show_default=True,
    help="Seconds to wait for the owner to release an entity's held messages (0: don't).",
)
@json_option
def resume(
    entity_type: str | None,
    entity_id: str | None,
    partition: int | None,
    wait_s: float,
    as_json: bool,
) -> None:
    """Let a paused entity's or partition's messages flow again, oldest first."""
    from entities import control

    with entity_errors():
        _target(partition, entity_type, entity_id)
        if partition is not None:
            control.resume_partition(partition)
            what = f"partition {partition}"
        else:
            assert entity_type is not None and entity_id is not None
            control.resume_entity(entity_type, entity_id, wait_s=wait_s or None)
            what = f"{entity_type} {entity_id!r}"
    if as_json:
        echo_json({"resumed": what})
    else:
        click.echo(f"resumed {what}")
