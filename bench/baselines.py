"""The two baselines, as a Celery app of their own: ``celery -A bench.baselines worker``.

A, "hand-rolled": what a team writes without this library: one Celery task per
message that locks the entity's row (``SELECT ... FOR UPDATE``), updates its
JSON state, commits and returns the new count. It runs with ``acks_late`` and
prefetch multiplier 1, the settings an entity task needs so a crash does not
lose a message and one worker does not hold many in flight. The connection is
one raw psycopg 3 connection per worker process, the leanest honest version.

B, "Celery doing nothing": a task that returns its argument, with Celery's
defaults (early ack, prefetch multiplier 4), Redis results.

Both: JSON serializer, Redis broker and Redis result backend (the bench's
Redis database), results kept a day like ours, `-P solo -c 1`, no events,
mingle, gossip or heartbeat. Settings come from BENCH_BROKER_URL and
BENCH_PG_DSN.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready

HANDROLLED = "bench.handrolled"
NOOP = "bench.noop"
#: Redis key a baseline worker sets once it consumes (its pid appended).
READY_KEY = "bench.ready."

app = Celery("bench", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"),
    result_backend=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_expires=86400,
    task_routes={HANDROLLED: {"queue": HANDROLLED}, NOOP: {"queue": NOOP}},
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)

_conn: Any = None


def _connection() -> Any:
    global _conn
    if _conn is None or _conn.closed:
        import psycopg

        _conn = psycopg.connect(os.environ["BENCH_PG_DSN"], autocommit=True)
    return _conn


@app.task(name=HANDROLLED, acks_late=True)  # type: ignore[untyped-decorator]  # celery is untyped
def handrolled(entity_id: str, amount: int = 1) -> int:
    """Baseline A: lock the row, update the JSON state, commit, return the new count."""
    from psycopg.types.json import Jsonb

    conn = _connection()
    with conn.transaction():
        select = "SELECT state FROM bench_handrolled WHERE id = %s FOR UPDATE"
        row = conn.execute(select, (entity_id,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO bench_handrolled (id, state) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (entity_id, Jsonb({"count": 0})),
            )
            row = conn.execute(select, (entity_id,)).fetchone()
        state = dict(row[0])
        state["count"] = int(state.get("count", 0)) + amount
        conn.execute(
            "UPDATE bench_handrolled SET state = %s WHERE id = %s", (Jsonb(state), entity_id)
        )
    return int(state["count"])


@app.task(name=NOOP)  # type: ignore[untyped-decorator]  # celery is untyped
def noop(entity_id: str, amount: int = 1) -> int:
    """Baseline B: does nothing; the reply is the argument."""
    return amount


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _announce_ready(**_: Any) -> None:
    """Tells the bench this worker consumes (one key per process id)."""
    client = app.backend.client
    client.set(f"{READY_KEY}{os.getpid()}", "1", ex=3600)
