"""How our drain rate grows with entities, partitions and workers (opt-in: ``--only scaling``).

Each point is one timed drain of ours (same clock as the main drain) with one
thing changed from the main configuration (1,000 entities, 16 partitions,
one worker): the number of distinct entities the messages go to, the
number of partitions (a fresh deployment each time: the count is fixed per
deployment), or the number of worker processes sharing the partitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import servers
from bench.config import Sizes
from bench.drain import drain_ids, timed_drain
from bench.systems import Ours, Run

ENTITY_POINTS = (1, 10, 100, 1_000, 10_000)
PARTITION_POINTS = (1, 4, 16, 64)
WORKER_POINTS = (1, 2)


def _point(run: Run, messages: int, entities: int, workers: int, name: str) -> dict[str, Any]:
    """One timed drain of ``messages`` over ``entities`` by ``workers`` fresh workers."""
    from entities.settings import configure

    configure(partitions=run.partitions)  # the router of this process routes by it
    servers.reset(run.servers, partitions=True)
    drain, _ = timed_drain(run, Ours(run), drain_ids(messages, entities), name, workers=workers)
    return {
        "entities": entities,
        "partitions": run.partitions,
        "workers": workers,
        **drain.as_json(),
    }


def measure(run: Run, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    """The three sweeps; every point drains ``sizes.drain_messages`` messages."""
    n_msgs = sizes.drain_messages
    points: dict[str, list[dict[str, Any]]] = {"entities": [], "partitions": [], "workers": []}
    for n in ENTITY_POINTS:
        points["entities"].append(_point(run, n_msgs, n, 1, f"scale-e{n}"))
        log(f"scaling: {n} entities: {points['entities'][-1]['per_s']:,.0f}/s")
    for p in PARTITION_POINTS:
        scaled = Run(run.servers, run.home, p)
        points["partitions"].append(_point(scaled, n_msgs, sizes.drain_entities, 1, f"scale-p{p}"))
        log(f"scaling: {p} partitions: {points['partitions'][-1]['per_s']:,.0f}/s")
    for w in WORKER_POINTS:
        points["workers"].append(_point(run, n_msgs, sizes.drain_entities, w, f"scale-w{w}"))
        log(f"scaling: {w} workers: {points['workers'][-1]['per_s']:,.0f}/s")
    _point_restore(run)
    return {"scaling": points}


def _point_restore(run: Run) -> None:
    """Puts the deployment back to the run's partition count."""
    from entities.settings import configure

    configure(partitions=run.partitions)
    servers.reset(run.servers, partitions=True)
