"""``entities stats``: partitions, owners, epochs, queue depths, lag, and each worker's counters."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from entities.cli._output import console, echo_json, entity_errors, json_option, when

#: Worker counters shown as columns, in order (all published by each worker).
WORKER_COLUMNS = (
    "resident",
    "hibernated",
    "unacked",
    "applied",
    "conflicts",
    "zombie_events",
    "forwarded",  # messages this worker forwarded from Celery's default queue
    "sends_refused",
)


@click.command(name="stats")
@json_option
def stats(as_json: bool) -> None:
    """Show the cluster: who owns each partition at which epoch, and how far behind it is.

    Lag is the messages of a partition not yet acknowledged: queued plus in
    flight. Workers report every second; a worker whose heartbeat expired is
    shown as gone until its stats are cleared.
    """
    from entities.inspect import cluster_status

    with entity_errors():
        status = cluster_status()
    if as_json:
        echo_json(_as_dict(status))
        return
    out = console()
    table = Table("partition", "owner", "epoch", "queued", "in flight", "lag", title="Partitions")
    for p in status.partitions:
        owner = p.owner or "[red]none[/red]"
        if p.owner is not None and not p.settled:
            owner += f" (epoch by {p.epoch_owner})"
        table.add_row(
            str(p.partition),
            owner,
            str(p.epoch),
            str(p.queued),
            str(p.inflight),
            str(p.queued + p.inflight),
        )
    out.print(table)
    workers = Table("worker", "state", "partitions", *WORKER_COLUMNS, title="Workers")
    for w in status.workers:
        workers.add_row(
            w.worker,
            "live" if w.alive else "gone",
            str(len(w.partitions)),
            *(str(w.stats.get(c, "-")) for c in WORKER_COLUMNS),
        )
    out.print(workers)
    totals = _totals(status)
    out.print(
        f"{len(status.live_workers)} live workers, {len(status.unowned)} unowned partitions, "
        f"lag {totals['lag']}, resident {totals['resident']}, conflicts {totals['conflicts']}, "
        f"sends refused {totals['sends_refused']} at {when(status.at)}"
    )


def _totals(status: Any) -> dict[str, int]:
    live = [w for w in status.workers if w.alive]
    return {
        "lag": sum(p.queued + p.inflight for p in status.partitions),
        "resident": sum(int(w.stats.get("resident", 0)) for w in live),
        "conflicts": sum(int(w.stats.get("conflicts", 0)) for w in live),
        "sends_refused": sum(int(w.stats.get("sends_refused", 0)) for w in live),
        "zombie_events": sum(w.zombie_events for w in live),
    }


def _as_dict(status: Any) -> dict[str, Any]:
    return {
        "at": status.at,
        "partitions": [
            {
                "partition": p.partition,
                "owner": p.owner,
                "lease_ttl_ms": p.lease_ttl_ms,
                "epoch": p.epoch,
                "epoch_owner": p.epoch_owner,
                "queued": p.queued,
                "inflight": p.inflight,
                "lag": p.queued + p.inflight,
            }
            for p in status.partitions
        ],
        "workers": [
            {"worker": w.worker, "alive": w.alive, "partitions": w.partitions, "stats": w.stats}
            for w in status.workers
        ],
        "totals": _totals(status),
    }
