"""Celery's default queue: what a client without our router sends is applied in send order.

Real Redis, Postgres and worker processes. The sender is a plain Celery app
with no router (as a client in another language would be), so its calls land
on Celery's default queue and a worker forwards them to their partitions.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from entities import read
from entities.inspect import lease_owner
from entities.routing import TASK_NAME, partition_for, queue_name
from tests.lifecycle import eventually
from tests.test_cluster_kit import envelope

#: Messages per ordered stream.
SENDS = 60


def foreign_client() -> Any:
    """A Celery app that knows nothing of entities: no router, its own default queue."""
    url = os.environ["ENTITIES_BROKER_URL"]
    client = Celery("foreign", broker=url, backend=url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"])
    return client


def applied_order(entity_id: str) -> list[int]:
    snapshot = read("recorder", entity_id)
    return [] if snapshot is None else [entry[0] for entry in snapshot.state["log"]]


def record(entity_id: str, seq: int, task_id: str) -> bytes:
    return envelope(["recorder", entity_id, {"op": "record", "args": [seq]}], task_id=task_id)


def test_sends_through_the_default_queue_are_applied_in_order_by_a_prefork_worker(  # type: ignore[no-untyped-def]
    workers,
) -> None:
    """Given a worker with a prefork pool of four processes, when a client without our
    router sends 60 messages in a row to one entity, three times, then each time the
    entity applies them exactly in send order."""
    workers.start(1, pool="prefork", concurrency=4)
    client = foreign_client()
    for trial in range(3):
        entity_id = f"default-order-{trial}"
        sent = [
            client.send_task(TASK_NAME, args=["recorder", entity_id, {"op": "record", "args": [i]}])
            for i in range(SENDS)
        ]
        assert [r.get(timeout=30) for r in sent] == list(range(1, SENDS + 1))
        assert applied_order(entity_id) == list(range(SENDS))


def forwarder_pid(redis_client: Any, fallback: int) -> int:
    """The pid of the worker forwarding the default queue now (its lease names it)."""
    from entities import routing

    key = getattr(routing, "FORWARDER_LEASE_KEY", None)
    owner = lease_owner(redis_client.get(key)) if key else None
    return int(owner.split(":")[1]) if owner else fallback


def test_killing_the_forwarder_mid_stream_loses_and_reorders_nothing(  # type: ignore[no-untyped-def]
    workers, redis_client
) -> None:
    """Given two workers and a steady stream of sends through the default queue, when the
    worker forwarding them is killed -9 mid-stream, then the other takes over and the
    entity applies every message once, in send order."""
    first, second = workers.start(2)
    total, entity_id = 400, "default-kill"
    task_ids = [f"dq-{i}-{uuid.uuid4()}" for i in range(total)]

    def produce() -> None:
        for i, task_id in enumerate(task_ids):
            redis_client.lpush("celery", record(entity_id, i, task_id))
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    eventually(lambda: len(applied_order(entity_id)) >= 60, timeout_s=30, interval_s=0.02)
    victim = forwarder_pid(redis_client, first.pid)
    killed = first if first.pid == victim else second
    killed.kill(signal.SIGKILL)
    producer.join()
    eventually(lambda: len(applied_order(entity_id)) >= total, timeout_s=60)
    assert applied_order(entity_id) == list(range(total))
    assert AsyncResult(task_ids[-1]).get(timeout=10) == total


def test_an_alarm_dispatch_on_the_default_queue_still_runs(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a due alarm and no beat, when an alarm dispatch (another task of this app, as
    an older beat would send it) lands on the default queue, then the forwarder hands it
    to the Celery consumer, it runs, and the alarm fires."""
    from entities import schedule_alarm
    from entities.transport import DISPATCH_ALARMS_TASK

    workers.start(1)
    schedule_alarm("alarmed", "a1", "ring", 0)
    redis_client.lpush("celery", envelope([], task=DISPATCH_ALARMS_TASK))
    eventually(lambda: (s := read("alarmed", "a1")) is not None and s.state["fired"])


def test_a_forwarder_that_lost_its_lease_moves_nothing_and_the_next_forwards_in_order(  # type: ignore[no-untyped-def]
    redis_client, store
) -> None:
    """Given forwarder A holding the default queue's lease and three sends queued, when A's
    lease passes to B between A's fetch and its settle, then A forwards nothing, and B
    forwards the three, once each, in send order."""
    from entities.routing import FORWARDER_INFLIGHT_KEY, FORWARDER_LEASE_KEY
    from entities.settings import get_settings
    from workers import app
    from workers.forwarder import DefaultQueueForwarder
    from workers.replies import ReplyWriter

    def forwarder(token: str) -> DefaultQueueForwarder:
        return DefaultQueueForwarder(
            redis_client, token, get_settings(), app, store, ReplyWriter(app.backend)
        )

    a, b = forwarder("a"), forwarder("b")
    redis_client.set(FORWARDER_LEASE_KEY, "a")
    sent = [record("lease-fence", i, f"fence-{i}") for i in range(3)]
    for raw in sent:
        redis_client.lpush("celery", raw)
    assert b.step() is False
    route = a._destination

    def stolen(raw: bytes) -> str | None:
        redis_client.set(FORWARDER_LEASE_KEY, "b")
        return route(raw)

    a._destination = stolen  # type: ignore[method-assign]
    assert a.step() is False
    assert redis_client.llen(FORWARDER_INFLIGHT_KEY) == 3
    assert b.step() is True
    queue = queue_name(partition_for("recorder", "lease-fence", 16))
    assert redis_client.lrange(queue, 0, -1) == list(reversed(sent))  # LPUSHed oldest first
    assert redis_client.llen(FORWARDER_INFLIGHT_KEY) == redis_client.llen("celery") == 0
