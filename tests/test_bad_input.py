"""Bad input: garbage on any queue we consume is dead-lettered with its reason, never fatal.

Real Redis, Postgres and worker processes. Messages are pushed straight onto
the queues in the exact form a Celery client writes (kombu's JSON envelope),
or mangled versions of it, as a buggy or hostile client could.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from celery.result import AsyncResult

from entities import BadMessage, UnknownHandler, read
from entities.routing import partition_for, queue_name
from entities.transport import DISPATCH_ALARMS_TASK
from tests.lifecycle import eventually
from tests.test_cluster_kit import call, envelope

PARTITIONS = 16


def mutate(raw: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """A copy of an envelope with ``change`` applied to its JSON."""
    doc = json.loads(raw)
    change(doc)
    return json.dumps(doc).encode()


def good(queue: str = "celery") -> bytes:
    return call("tally", "t", "add", queue=queue)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


#: name -> (raw message, a fragment of the dead letter's reason). Every one of these
#: makes a stock Celery 5.7 worker exit with "Unrecoverable error" (or is refused by it).
HOSTILE: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"hello world", "not JSON"),
    "not UTF-8": (b"\xff\xfe\xfa garbage", "not UTF-8"),
    "a JSON list": (b"[1, 2, 3]", "not an object"),
    "a JSON string": (b'"surprise"', "not an object"),
    "kombu type tag": (b'{"__type__": "nope", "__value__": 1}', "not JSON"),
    "nested 100,000 deep": (b"[" * 100_000, "not JSON"),
    "properties not an object": (mutate(good(), _set(("properties",), "nope")), "properties"),
    "headers a list": (mutate(good(), _set(("headers",), [1])), "headers"),
    "unknown body encoding": (
        mutate(good(), _set(("properties", "body_encoding"), "rot13")),
        "kombu cannot read",
    ),
    "invalid base64": (mutate(good(), _set(("body",), "!!!notbase64")), "kombu cannot read"),
    "task id None": (
        envelope(["tally", "t", {"op": "add"}], task_id=None, headers={"id": None}),
        "id=None",
    ),
    "task id int": (envelope(["tally", "t", {"op": "add"}], headers={"id": 5}), "id=5"),
    "body not a triple": (envelope(None, body=b'{"a": 1}'), "triple"),
    "unknown task": (envelope([1, 2], task="nope.nope"), "task='nope.nope'"),
    "protocol 1 (no task header)": (
        envelope(None, headers={"task": None}, body=json.dumps({"task": "x"}).encode()),
        "task=None",
    ),
    "pickle": (
        envelope(
            None,
            content_type="application/x-python-serialize",
            body=pickle.dumps((["tally", "t", {"op": "add"}], {}, {})),
        ),
        "only application/json",
    ),
}

#: Well-formed envelopes of this app's other tasks that crash Celery's own strategy: the
#: default queue's forwarder hands them to the Celery consumer, whose guard dead-letters them.
STRATEGY_POISON: dict[str, tuple[bytes, str]] = {
    "stamped headers not a list": (
        envelope([], task=DISPATCH_ALARMS_TASK, headers={"stamped_headers": 5, "stamps": 5}),
        "Celery could not run it",
    ),
}


def test_hostile_messages_are_dead_lettered_and_both_queues_keep_flowing(
    workers,
    redis_client,
    store,  # type: ignore[no-untyped-def]
) -> None:
    """Given a worker, when every kind of garbage that kills a stock Celery worker lands on
    the default queue and on an entity's partition queue, each ahead of a good call, then
    each is dead-lettered with its reason, both good calls are answered, and the worker is
    still running."""
    (worker,) = workers.start(1)
    partition_queue = queue_name(partition_for("tally", "t", PARTITIONS))
    on_default = {**HOSTILE, **STRATEGY_POISON}
    for raw, _reason in on_default.values():
        redis_client.lpush("celery", raw)
    for raw, _reason in HOSTILE.values():
        redis_client.lpush(partition_queue, raw)
    redis_client.lpush("celery", call("tally", "t", "add", task_id="after-default"))
    redis_client.lpush(
        partition_queue, call("tally", "t", "add", task_id="after-partition", queue=partition_queue)
    )

    replies = {AsyncResult(t).get(timeout=30) for t in ("after-default", "after-partition")}
    assert replies == {1, 2}
    expected = len(on_default) + len(HOSTILE)
    dead = eventually(lambda: (d := store.dead_letters(limit=1000)) and len(d) >= expected and d)
    assert len(dead) == expected
    by_queue = {q: [d.reason for d in dead if d.queue == q] for q in ("celery", partition_queue)}
    assert len(by_queue["celery"]) == len(on_default)
    assert len(by_queue[partition_queue]) == len(HOSTILE)
    for name, (_raw, fragment) in on_default.items():
        assert any(fragment in r for r in by_queue["celery"]), f"{name}: no {fragment!r} reason"
    assert all(by_queue[partition_queue])
    assert worker.alive()
    assert "Unrecoverable error" not in worker.output()
    assert redis_client.llen("celery") == redis_client.llen(partition_queue) == 0


BAD_CALLS: dict[str, list[Any]] = {
    "id too long": ["tally", "x" * 256, {"op": "add"}],
    "NUL in id": ["tally", "a\x00b", {"op": "add"}],
    "id not a str": ["tally", 7, {"op": "add"}],
    "msg not a dict": ["tally", "t", ["add"]],
    "private op": ["tally", "t", {"op": "_secret"}],
    "extra keys": ["tally", "t", {"op": "add", "evil": 1}],
    "args not a list": ["tally", "t", {"op": "add", "args": "x"}],
    "too many arguments": ["tally", "t", {"op": "add"}, None, "extra"],
    "bad durability": ["tally", "t", {"op": "add"}, "sometimes"],
}

SQL_METACHARACTERS = [
    "'; DROP TABLE entity_snapshots; --",
    'a"b',
    "%s%s%(x)s",
    "\\x00",
    "ü💥\u202e",
]


def test_malformed_calls_get_bad_message_and_ids_and_sizes_are_bounded(
    workers,
    redis_client,
    store,  # type: ignore[no-untyped-def]
) -> None:
    """Given a worker with a 2 KiB message limit: when well-formed Celery calls carry a
    malformed entity message (on either queue), then each caller gets BadMessage (an op
    starting with _, UnknownHandler) and nothing
    is stored; an over-long id is refused at send time; oversized messages get BadMessage
    naming the limit; ids full of SQL metacharacters are ordinary entities."""
    from workers import send_to_entity

    workers.start(1, ENTITIES_MAX_MESSAGE_BYTES="2048")
    partition_queue = queue_name(partition_for("tally", "t", PARTITIONS))
    for name, args in BAD_CALLS.items():
        for queue in ("celery", partition_queue):
            redis_client.lpush(queue, envelope(args, task_id=f"{queue}-{name}", queue=queue))
    with pytest.raises(BadMessage, match="limit is 255"):
        send_to_entity.delay("tally", "x" * 256, {"op": "add"})
    oversized = [
        send_to_entity.delay("tally", "t", {"op": "add", "args": ["x" * size]})
        for size in (3_000, 20_000)
    ]

    for name in BAD_CALLS:
        # An op that can be no handler is UnknownHandler, as the contract says.
        error = UnknownHandler if name == "private op" else BadMessage
        for queue in ("celery", partition_queue):
            with pytest.raises(error):
                AsyncResult(f"{queue}-{name}").get(timeout=30)
    for result in oversized:
        with pytest.raises(BadMessage, match="exceeds the limit of 2048 bytes"):
            result.get(timeout=30)
    assert read("tally", "t") is None
    dead = store.dead_letters()
    assert len(dead) == 2 and all("exceeds the limit" in d.reason for d in dead)
    for entity_id in SQL_METACHARACTERS:
        assert send_to_entity.delay("tally", entity_id, {"op": "add"}).get(timeout=30) == 1
    for entity_id in SQL_METACHARACTERS:
        snapshot = read("tally", entity_id)
        assert snapshot is not None and snapshot.state == {"count": 1}
    assert send_to_entity.delay("tally", "t", {"op": "add"}).get(timeout=30) == 1
