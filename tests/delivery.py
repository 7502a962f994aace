"""Helpers for tests that send messages to real workers, or push raw ones onto queues."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, TypeVar

import sqlalchemy as sa

from entities.routing import TASK_NAME, partition_for, queue_name

T = TypeVar("T")

#: Seconds any single reply may take on a loaded 2-core machine.
REPLY_TIMEOUT_S = 60


def partitions() -> int:
    return int(os.environ["ENTITIES_PARTITIONS"])


def send(entity_type: str, entity_id: str, op: str, *args: Any, **options: Any) -> Any:
    """send_to_entity.delay(entity_type, entity_id, {"op": op, "args": args}) with options."""
    from workers import send_to_entity

    msg = {"op": op, "args": list(args)}
    return send_to_entity.apply_async((entity_type, entity_id, msg), **options)


def call(entity_type: str, entity_id: str, op: str, *args: Any) -> Any:
    """Sends and waits for the reply."""
    return send(entity_type, entity_id, op, *args).get(timeout=REPLY_TIMEOUT_S)


def result(task_id: str) -> Any:
    """The AsyncResult of ``task_id`` on the workers' app."""
    from workers import app

    return app.AsyncResult(task_id)


def collect(results: list[Any]) -> list[Any]:
    """Waits for every AsyncResult (one round trip for all), then reads each one's reply."""
    from celery.result import ResultSet

    ResultSet(results).join_native(timeout=REPLY_TIMEOUT_S * 2)
    return [r.get(timeout=REPLY_TIMEOUT_S) for r in results]


def increments(entity_ids: list[str], rounds: int) -> list[tuple[str, Any]]:
    """Sends ``rounds`` increments to each counter, interleaved; returns (id, AsyncResult)."""
    from workers import send_to_entity

    msg = {"op": "increment"}
    return [
        (eid, send_to_entity.delay("counter", eid, msg))
        for _ in range(rounds)
        for eid in entity_ids
    ]


def replies_by_key(sent: Iterable[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Waits for every (key, AsyncResult) and groups the replies by key, in send order."""
    grouped: dict[str, list[Any]] = defaultdict(list)
    for key, async_result in sent:
        grouped[key].append(async_result.get(timeout=REPLY_TIMEOUT_S))
    return dict(grouped)


def envelope(
    args: Any,
    kwargs: Any = None,
    *,
    task_id: Any = None,
    task: str = TASK_NAME,
    content_type: str = "application/json",
    body: bytes | None = None,
    queue: str = "celery",
) -> bytes:
    """A kombu Redis envelope of a Celery protocol 2 message, as a producer would LPUSH it."""
    task_id = str(uuid.uuid4()) if task_id is None else task_id
    if body is None:
        body = json.dumps([args, kwargs or {}, {"callbacks": None, "errbacks": None}]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "reply_to": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def partition_of(entity_type: str, entity_id: str) -> int:
    return partition_for(entity_type, entity_id, partitions())


def queue_of(entity_type: str, entity_id: str) -> str:
    """The Redis list of the entity's partition."""
    return queue_name(partition_of(entity_type, entity_id))


def id_in_partition(entity_type: str, partition: int, prefix: str = "e") -> str:
    """The first id ``<prefix>-<n>`` of ``entity_type`` that lives in ``partition``."""
    n = 0
    while partition_of(entity_type, f"{prefix}-{n}") != partition:
        n += 1
    return f"{prefix}-{n}"


def processed_count(store: Any) -> int:
    """How many messages the store has recorded as applied."""
    from entities.store import schema

    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.processed)).scalar())


def queues_drained(redis_client: Any) -> bool:
    """True when every partition queue and in-flight list is empty."""
    from entities.routing import inflight_key

    with redis_client.pipeline() as pipe:
        for p in range(partitions()):
            pipe.llen(queue_name(p))
            pipe.llen(inflight_key(p))
        return not any(pipe.execute())
