"""``entities upgrade``: rewrite every stored snapshot of a type at the class's current vsn."""

from __future__ import annotations

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from entities.cli._output import (
    console,
    echo_json,
    entity_errors,
    import_entity_modules,
    json_option,
)


@click.command(name="upgrade")
@click.argument("entity_type")
@click.option("--batch-size", default=500, show_default=True, help="Ids per fenced commit.")
@json_option
def upgrade(entity_type: str, batch_size: int, as_json: bool) -> None:
    """Rewrite every stored ENTITY_TYPE snapshot older than its class's vsn, now.

    Each snapshot passes through the class's upgrade() steps and is written
    back fenced by its version, so workers may keep running: a snapshot a
    worker changes meanwhile is skipped, since its worker writes the current
    vsn anyway. The class comes from ENTITIES_MODULES.
    """
    from entities import registry
    from entities.client import get_store
    from entities.upgrades import rewrite_snapshots

    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    with entity_errors():
        import_entity_modules()
        cls = registry.lookup(entity_type)
        store = get_store()
        if as_json:
            rewritten = rewrite_snapshots(cls, store, batch_size)
            echo_json(
                {
                    "entity_type": entity_type,
                    "vsn": cls.__entity_options__.vsn,
                    "rewritten": rewritten,
                }
            )
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} read, {task.fields[rewritten]} rewritten"),
            TimeElapsedColumn(),
            console=console(),
            transient=False,
        )
        with progress:
            task = progress.add_task(f"upgrading {entity_type}", total=None, rewritten=0)

            def report(done: int, rewritten: int) -> None:
                progress.update(task, completed=done, rewritten=rewritten)

            rewritten = rewrite_snapshots(cls, store, batch_size, report)
            progress.update(task, total=progress.tasks[0].completed)
    click.echo(f"{rewritten} {entity_type} snapshots rewritten at vsn {cls.__entity_options__.vsn}")
