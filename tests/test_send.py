"""The direct send: a plain send_to_entity call is pushed straight onto its partition queue,
as the very message Celery's own publish would leave there, and anything more goes
through Celery."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from celery import signals

from entities.errors import BadMessage
from tests.delivery import REPLY_TIMEOUT_S, queue_of

#: Header values that differ between any two sends (or name the sending process).
PER_SEND = {"id", "root_id", "argsrepr", "origin"}


def queued(redis_client: Any, entity_type: str, entity_id: str) -> list[dict[str, Any]]:
    """The messages waiting on the entity's partition queue, oldest first, parsed."""
    raws = redis_client.lrange(queue_of(entity_type, entity_id), 0, -1)
    return [json.loads(raw) for raw in reversed(raws)]


def body(message: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(message["body"]))


def test_a_direct_send_leaves_the_message_celery_would(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given one call sent directly and one through Celery's publish (a link forces it),
    then both lie on the same partition queue with the same headers, properties and
    body, but for what differs between any two sends."""
    from workers import send_to_entity

    msg = {"op": "increment", "args": [2]}
    direct = send_to_entity.delay("counter", "same", msg)
    celery = send_to_entity.apply_async(
        ("counter", "same", msg), link=send_to_entity.si("counter", "other", msg)
    )
    first, second = queued(redis_client, "counter", "same")
    assert first["headers"]["id"] == direct.id
    assert second["headers"]["id"] == celery.id
    assert set(first["headers"]) == set(second["headers"])
    for name in set(first["headers"]) - PER_SEND:
        if name != "stamps":  # Celery stamps a linked call; the direct one has none
            assert first["headers"][name] == second["headers"][name], name
    assert first["headers"]["root_id"] == direct.id
    assert set(first["properties"]) == set(second["properties"])
    assert first["properties"]["correlation_id"] == direct.id
    assert first["content-type"] == second["content-type"] == "application/json"
    assert body(first)[:2] == body(second)[:2] == [["counter", "same", msg], {}]


def test_a_direct_send_is_served_and_replied_to(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, when calls are sent directly (with durability, with a task id, and
    through the entities client), then each is applied and replied to once."""
    from entities.client import send
    from workers import send_to_entity

    workers.start(1)
    assert send_to_entity.delay("counter", "d", {"op": "increment"}).get(REPLY_TIMEOUT_S) == 1
    strict = send_to_entity.delay("counter", "d", {"op": "increment"}, durability="strict")
    assert strict.get(timeout=REPLY_TIMEOUT_S) == 2
    keyed = send_to_entity.apply_async(("counter", "d", {"op": "increment"}), task_id="k-1")
    assert keyed.id == "k-1" and keyed.get(timeout=REPLY_TIMEOUT_S) == 3
    assert send("counter", "d", {"op": "increment"}).get(timeout=REPLY_TIMEOUT_S) == 4


def test_a_publish_signal_receiver_sees_every_call(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a before_task_publish receiver (tracing does this), then calls go through
    Celery's publish and the receiver sees each one."""
    from workers import send_to_entity

    seen: list[str] = []

    def receiver(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])

    signals.before_task_publish.connect(receiver)
    try:
        sent = send_to_entity.delay("counter", "signalled", {"op": "increment"})
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [sent.id]
    [message] = queued(redis_client, "counter", "signalled")
    assert message["headers"]["id"] == sent.id


def test_options_only_celery_knows_take_celerys_publish(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given an option the direct send does not take (extra headers), then the call goes
    through Celery's publish, which honours it."""
    from workers import send_to_entity

    msg = {"op": "increment"}
    sent = send_to_entity.apply_async(("counter", "p", msg), headers={"x-trace": "t-1"})
    [message] = queued(redis_client, "counter", "p")
    assert message["headers"]["id"] == sent.id
    assert message["headers"]["x-trace"] == "t-1"


@pytest.mark.parametrize("entity_id", ["", "x" * 300, "lone \ud800"])
def test_a_hostile_id_is_refused_before_anything_is_sent(redis_client, entity_id: str) -> None:  # type: ignore[no-untyped-def]
    """Given an id no entity can have, then the send raises BadMessage naming it and
    nothing reaches any queue."""
    from workers import send_to_entity

    with pytest.raises(BadMessage, match="entity id"):
        send_to_entity.delay("counter", entity_id, {"op": "increment"})
    assert not [k for k in redis_client.keys("entities.{p*}") if not k.endswith(b".lease")]


def test_a_plain_call_skips_kombus_publish(redis_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Given kombu's publish made to fail, then plain calls (delay, a task id, the entities
    client) are still queued: they are pushed directly."""
    from kombu.messaging import Producer

    from entities.client import send
    from workers import send_to_entity

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("went through kombu's publish")

    monkeypatch.setattr(Producer, "publish", refuse)
    ids = [
        send_to_entity.delay("counter", "direct", {"op": "increment"}).id,
        send_to_entity.apply_async(("counter", "direct", {"op": "get"}), task_id="k-2").id,
        send("counter", "direct", {"op": "increment"}, durability="strict").id,
    ]
    assert [m["headers"]["id"] for m in queued(redis_client, "counter", "direct")] == ids


def test_a_priority_is_refused_before_anything_is_sent(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a priority (which would put the call on a kombu priority sub-queue that no
    partition owner reads), then the send raises BadMessage naming it and nothing is
    queued anywhere."""
    from entities.client import send
    from workers import send_to_entity

    with pytest.raises(BadMessage, match="priority"):
        send_to_entity.apply_async(("counter", "pri", {"op": "increment"}), priority=5)
    with pytest.raises(BadMessage, match="priority"):
        send("counter", "pri", {"op": "increment"}, priority=9)
    assert not [k for k in redis_client.keys("entities.{p*}") if not k.endswith(b".lease")]
