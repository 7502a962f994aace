"""Pausing and resuming an entity or a partition: messages are held, never lost, and flow
again in order."""

from __future__ import annotations

import os
import signal
import time

from entities import control
from entities.routing import partition_for


def send(entity_id: str):  # type: ignore[no-untyped-def]
    from workers import send_to_entity

    return send_to_entity.delay("counter", entity_id, {"op": "increment"})


def same_partition_as(entity_id: str) -> str:
    partitions = int(os.environ["ENTITIES_PARTITIONS"])
    target = partition_for("counter", entity_id, partitions)
    return next(
        f"n{i}" for i in range(10_000) if partition_for("counter", f"n{i}", partitions) == target
    )


def test_a_paused_entity_holds_its_messages_while_its_partition_flows(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a paused entity, when it and a neighbour in its partition get messages, then
    the neighbour is served, the paused entity's messages wait, and on resume they are
    applied in order before the newer ones."""
    workers.start(1)
    neighbour = same_partition_as("held")
    assert send("held").get(timeout=30) == 1
    control.pause_entity("counter", "held")
    time.sleep(0.6)  # the owner reads the pause at its next step
    first = [send("held") for _ in range(5)]
    assert [send(neighbour).get(timeout=30) for _ in range(3)] == [1, 2, 3]
    time.sleep(0.5)
    assert not any(r.ready() for r in first)
    assert control.paused().entities == {("counter", "held"): 5}
    later = [send("held") for _ in range(2)]
    control.resume_entity("counter", "held")
    assert [r.get(timeout=30) for r in first + later] == [2, 3, 4, 5, 6, 7, 8]
    assert control.paused().entities == {}


def test_a_paused_partition_is_not_read_until_resumed(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a paused partition, when its entities get messages, then none is applied until
    the partition is resumed, and then all are, in order."""
    workers.start(1)
    partition = partition_for("counter", "p", int(os.environ["ENTITIES_PARTITIONS"]))
    control.pause_partition(partition)
    time.sleep(0.6)
    results = [send("p") for _ in range(4)]
    time.sleep(1.0)
    assert not any(r.ready() for r in results)
    assert control.paused().partitions == [partition]
    control.resume_partition(partition)
    assert [r.get(timeout=30) for r in results] == [1, 2, 3, 4]


def test_held_messages_survive_a_killed_worker(workers) -> None:  # type: ignore[no-untyped-def]
    """Given held messages, when the worker is killed -9 and another starts, then resuming
    still applies every one of them, once, in order."""
    (worker,) = workers.start(1)
    control.pause_entity("counter", "k")
    time.sleep(0.6)
    results = [send("k") for _ in range(3)]
    time.sleep(1.0)
    worker.kill(signal.SIGKILL)
    workers.start(1)
    control.resume_entity("counter", "k", wait_s=30)
    assert [r.get(timeout=30) for r in results] == [1, 2, 3]
