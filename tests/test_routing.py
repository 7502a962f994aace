"""Routing safety: one partition (so one consumer) per entity, whatever the sender did."""

from __future__ import annotations

import os
import subprocess
import sys

from celery.result import AsyncResult

from entities import read
from entities.routing import partition_for, queue_name
from entities.transport import celery_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_message_on_the_wrong_partition_is_forwarded_not_applied_there(  # type: ignore[no-untyped-def]
    workers, redis_client
) -> None:
    """Given messages pushed onto a partition that does not own their entity (a sender with
    another partition count), when workers run, then each is forwarded to its entity's
    partition and applied there once, in order, with replies as usual."""
    from workers import app

    workers.start(1)
    partitions = int(os.environ["ENTITIES_PARTITIONS"])
    home = partition_for("counter", "lost", partitions)
    wrong = (home + 1) % partitions
    ids = [f"misrouted-{i}" for i in range(5)]
    for task_id in ids:
        raw = celery_message("counter", "lost", {"op": "increment"}, task_id=task_id)
        redis_client.lpush(queue_name(wrong), raw)
    replies = [AsyncResult(t, app=app).get(timeout=60) for t in ids]
    assert replies == [1, 2, 3, 4, 5]
    assert read("counter", "lost").state == {"count": 5}


def test_a_client_with_another_partition_count_refuses_to_send() -> None:
    """Given a deployment recorded with 16 partitions, when a client configured with 8
    sends, then it stops with a ConfigurationError naming both counts."""
    code = (
        "from workers import send_to_entity\n"
        "try:\n"
        "    send_to_entity.delay('counter', 'x', {'op': 'increment'})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "ENTITIES_PARTITIONS": "8"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ConfigurationError" in out.stdout, out.stdout + out.stderr
    assert "ENTITIES_PARTITIONS is 8" in out.stdout and "16" in out.stdout
