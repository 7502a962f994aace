"""``entities dead-letters``: list, replay and drop messages no worker could understand."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from entities.cli._output import console, echo_json, entity_errors, json_option, when
from entities.messages import parse_envelope
from entities.redis_client import redis_from_url
from entities.routing import partition_for, queue_name
from entities.settings import get_settings
from entities.store import DeadLetter

#: Characters of a raw message shown in the table.
PREVIEW = 60


@click.group(name="dead-letters")
def dead_letters() -> None:
    """Messages no worker could understand, kept in the store with the reason.

    A dead letter was never applied. Fix what the reason says (the sender,
    a limit, a missing entity module), then replay it, or drop it.
    """


def _store() -> Any:
    from entities.client import get_store

    return get_store()


@dead_letters.command(name="list")
@click.option("--limit", default=100, show_default=True, help="Most dead letters, newest first.")
@json_option
def list_dead_letters(limit: int, as_json: bool) -> None:
    """List dead letters, newest first: id, queue, reason, when, the message."""
    with entity_errors():
        letters: list[DeadLetter] = _store().dead_letters(limit)
    if as_json:
        echo_json(letters)
        return
    if not letters:
        click.echo("no dead letters")
        return
    table = Table("id", "queue", "when", "reason", "message")
    for d in letters:
        preview = d.raw if len(d.raw) <= PREVIEW else d.raw[: PREVIEW - 1] + "…"
        table.add_row(str(d.id), d.queue, when(d.created_at), d.reason, preview)
    console().print(table)


def replay_target(letter: DeadLetter) -> str:
    """The queue a dead letter goes back to; raises ClickException if it cannot be replayed.

    A ``send_to_entity`` call goes to its entity's partition queue (the
    partition count may have been set right since); any other Celery message
    goes back to the queue it came from. Text that is not a Celery message
    envelope is refused: no worker could ever read it.
    """
    try:
        outer = json.loads(letter.raw)
    except ValueError:
        outer = None
    if not (isinstance(outer, dict) and isinstance(outer.get("headers"), dict) and "body" in outer):
        raise click.ClickException(
            f"dead letter {letter.id} is not a Celery message ({letter.reason}); "
            "it cannot be replayed, only dropped"
        )
    env = parse_envelope(letter.raw.encode("utf-8"), get_settings().max_message_bytes)
    if env.entity_type and env.entity_id:
        return queue_name(partition_for(env.entity_type, env.entity_id, get_settings().partitions))
    return letter.queue


@dead_letters.command(name="replay")
@click.argument("dead_letter_id", type=int)
@json_option
def replay(dead_letter_id: int, as_json: bool) -> None:
    """Put dead letter DEAD_LETTER_ID back on its queue, then remove it from the store.

    A message that was already applied once (same task id) is not applied
    again: its sender gets the first reply.
    """
    with entity_errors():
        store = _store()
        letter = store.get_dead_letter(dead_letter_id)
        if letter is None:
            raise click.ClickException(f"no dead letter {dead_letter_id}")
        queue = replay_target(letter)
        r = redis_from_url(get_settings().broker_url)
        try:
            r.lpush(queue, letter.raw.encode("utf-8"))  # the newest end, as kombu publishes
        finally:
            r.close()
        store.delete_dead_letter(dead_letter_id)
    if as_json:
        echo_json({"replayed": dead_letter_id, "queue": queue})
    else:
        click.echo(f"dead letter {dead_letter_id} replayed onto {queue}")


@dead_letters.command(name="drop")
@click.argument("dead_letter_id", type=int)
@json_option
def drop(dead_letter_id: int, as_json: bool) -> None:
    """Remove dead letter DEAD_LETTER_ID for good."""
    with entity_errors():
        dropped = _store().delete_dead_letter(dead_letter_id)
    if as_json:
        echo_json({"dropped": dead_letter_id if dropped else None})
    if not dropped:
        raise click.ClickException(f"no dead letter {dead_letter_id}")
    if not as_json:
        click.echo(f"dead letter {dead_letter_id} dropped")
