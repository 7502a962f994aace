"""Errors through real workers: the caller gets them, state is untouched, the entity serves on.

Also: messages sent by task name to Celery's default queue are forwarded, and
garbage pushed onto a queue we consume is dead-lettered without stopping the
partition or the worker.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest

from entities import BadMessage, StateError, UnknownEntityType, UnknownHandler, read
from tests.delivery import (
    REPLY_TIMEOUT_S,
    call,
    envelope,
    id_in_partition,
    queue_of,
    result,
    send,
)
from tests.fixture_entities import Boom
from tests.lifecycle import eventually


def dead_letters(store: Any) -> list[Any]:
    return store.dead_letters()


def test_a_handler_error_reaches_the_caller_and_leaves_state_as_committed(workers) -> None:  # type: ignore[no-untyped-def]
    """Given fragile at 3, when a handler sets 7 and raises Boom, then the caller gets Boom
    with its message, the committed value is still 3, and the next message sees 3."""
    workers.start(1)
    assert call("fragile", "f", "set", 3) == 3
    before = read("fragile", "f")
    with pytest.raises(Boom, match="refusing 7"):
        call("fragile", "f", "set_then_fail", 7)
    after = read("fragile", "f")
    assert (after.state, after.version) == (before.state, before.version)
    assert call("fragile", "f", "get") == 3
    assert call("fragile", "f", "set", 4) == 4


#: Client programs that never import the entity module (tests.fixture_entities) themselves.
CLIENTS = {
    "imports workers": """
from workers import send_to_entity
sent = send_to_entity.delay("fragile", "c1", {"op": "set_then_fail", "args": [7]})
""",
    "uses an entities helper and a plain Celery app": """
import os
from celery import Celery
import entities
entities.read("fragile", "c2")
plain = Celery("plain", broker=os.environ["ENTITIES_BROKER_URL"],
               backend=os.environ["ENTITIES_RESULT_BACKEND"])
sent = plain.send_task("entities.send_to_entity",
                       args=["fragile", "c2", {"op": "set_then_fail", "args": [7]}])
""",
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_client_that_never_imports_the_entity_module_gets_its_exception_class(  # type: ignore[no-untyped-def]
    workers, client: str
) -> None:
    """Given a client process that imports `workers`, or uses an `entities` helper, and
    never the module defining Boom, when a handler raises Boom, then `except Boom` in the
    client catches it: the class is the module's own, not one Celery made up."""
    import subprocess
    import sys

    workers.start(1)
    code = (
        CLIENTS[client]
        + """
try:
    sent.get(timeout=30)
except Exception as exc:
    from tests.fixture_entities import Boom
    print(type(exc).__module__, type(exc).__qualname__, isinstance(exc, Boom), exc)
"""
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=3) == [
        "tests.fixture_entities",
        "Boom",
        "True",
        "refusing 7\n",
    ]


def test_errors_in_one_batch_do_not_touch_their_neighbours(workers) -> None:  # type: ignore[no-untyped-def]
    """Given good and failing messages queued together for one entity, when one batch
    applies them, then each failing one gets its error and every good one its effect."""
    sent = [
        send("suite-probe", "p", "note", "a"),
        send("suite-probe", "p", "fail", "first"),
        send("suite-probe", "p", "note", "b"),
        send("suite-probe", "p", "reply_unencodable"),
        send("suite-probe", "p", "nope"),
        send("suite-probe", "p", "note", "c"),
    ]
    workers.start(1)
    assert sent[0].get(timeout=REPLY_TIMEOUT_S) == 1
    with pytest.raises(ValueError, match="first"):
        sent[1].get(timeout=REPLY_TIMEOUT_S)
    assert sent[2].get(timeout=REPLY_TIMEOUT_S) == 2
    with pytest.raises(StateError, match="set"):
        sent[3].get(timeout=REPLY_TIMEOUT_S)
    with pytest.raises(UnknownHandler):
        sent[4].get(timeout=REPLY_TIMEOUT_S)
    assert sent[5].get(timeout=REPLY_TIMEOUT_S) == 3
    state = read("suite-probe", "p").state
    assert (state["notes"], state["calls"]) == (["a", "b", "c"], 0)


def test_refused_messages_get_their_error_and_change_nothing(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a counter at 1, when messages with an unknown type, unknown op, wrong args or
    a malformed message arrive, then each caller gets its error and the count stays 1."""
    workers.start(1)
    assert call("counter", "c", "increment", 1) == 1
    with pytest.raises(UnknownEntityType, match="no-such-type"):
        call("no-such-type", "c", "increment")
    with pytest.raises(UnknownHandler, match="decrement"):
        call("counter", "c", "decrement")
    with pytest.raises(BadMessage, match="too many positional arguments"):
        call("counter", "c", "increment", 1, 2)
    with pytest.raises(BadMessage, match="unexpected keyword argument 'by'"):
        send_msg("counter", "c", {"op": "increment", "kwargs": {"by": 2}})
    with pytest.raises(BadMessage, match="message must be a dict"):
        send_msg("counter", "c", ["increment"])
    with pytest.raises(BadMessage, match="got also"):
        send_msg("counter", "c", {"op": "increment", "oops": 1})
    for private in ("_private", "__init__", "__class__"):  # no handler, as the contract says
        with pytest.raises(UnknownHandler, match=private):
            send_msg("counter", "c", {"op": private})
    assert call("counter", "c", "get") == 1
    assert read("counter", "c").state == {"count": 1}


def send_msg(entity_type: str, entity_id: str, msg: Any) -> Any:
    from workers import send_to_entity

    return send_to_entity.delay(entity_type, entity_id, msg).get(timeout=REPLY_TIMEOUT_S)


def test_state_that_cannot_be_encoded_is_a_state_error(workers) -> None:  # type: ignore[no-untyped-def]
    """Given fragile at 5, when a handler leaves a value the codec refuses, then the caller
    gets StateError naming the field and the type, and the committed state stays 5."""
    workers.start(1)
    assert call("fragile", "s", "set", 5) == 5
    with pytest.raises(StateError, match=r"fragile\.value.*object"):
        call("fragile", "s", "bad_state")
    assert read("fragile", "s").state == {"value": 5}
    assert call("fragile", "s", "get") == 5


def test_text_postgres_cannot_hold_is_refused_and_the_partition_serves_on(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a probe, when a handler stores a str with NUL (or replies with one), then the
    caller gets StateError, the state is unchanged, and the next message is applied."""
    workers.start(1)
    assert call("suite-probe", "t", "set", "ok") == "ok"
    with pytest.raises(StateError, match="NUL"):
        call("suite-probe", "t", "set", "nul\x00inside")
    with pytest.raises(StateError, match="NUL"):
        call("suite-probe", "t", "note", "\x00")
    assert read("suite-probe", "t").state["value"] == "ok"
    assert call("suite-probe", "t", "set", "fine") == "fine"


def test_state_over_the_size_limit_is_a_state_error(workers) -> None:  # type: ignore[no-untyped-def]
    """Given workers limited to 2,000-byte states, when a handler grows the state past it,
    then StateError, nothing committed, and smaller states still commit."""
    workers.start(1, ENTITIES_MAX_STATE_BYTES="2000")
    assert call("suite-probe", "big", "fill", 10) == 10
    with pytest.raises(StateError, match="ENTITIES_MAX_STATE_BYTES"):
        call("suite-probe", "big", "fill", 5000)
    assert read("suite-probe", "big").state["blob"] == "x" * 10
    assert call("suite-probe", "big", "fill", 20) == 20


def test_a_message_sent_by_name_to_the_default_queue_is_forwarded(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a client that sends by task name to Celery's default queue, then a worker
    forwards it to its partition with the same task id and the caller gets the reply."""
    from workers import app, send_to_entity

    workers.start(1)
    task_id = f"by-name-{uuid.uuid4()}"
    sent = app.send_task(
        send_to_entity.name,
        args=["counter", "named", {"op": "increment", "args": [4]}],
        queue="celery",
        task_id=task_id,
    )
    assert sent.get(timeout=REPLY_TIMEOUT_S) == 4
    assert result(task_id).get(timeout=REPLY_TIMEOUT_S) == 4
    assert read("counter", "named").state == {"count": 4}


def test_a_raw_protocol_2_message_on_the_default_queue_is_forwarded(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a message written the way any Celery client writes it (no router), when it is
    pushed onto the default queue, then it is applied and replied under its task id."""
    workers.start(1)
    task_id = f"raw-{uuid.uuid4()}"
    redis_client.lpush(
        "celery", envelope(["counter", "raw", {"op": "increment", "args": [2]}], task_id=task_id)
    )
    assert result(task_id).get(timeout=REPLY_TIMEOUT_S) == 2
    assert read("counter", "raw").state == {"count": 2}


class Marker:
    """Unpickling this creates a file: the proof that a worker unpickled a message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.mkdir, (str(self.path),))


def test_garbage_on_a_partition_queue_is_dead_lettered_and_the_partition_serves_on(  # type: ignore[no-untyped-def]
    workers, redis_client, store, tmp_path: Path
) -> None:
    """Given a partition queue, when non-JSON, JSON without headers, a pickle message and a
    message from another task land on it, then each is dead-lettered with its reason, the
    pickle is never unpickled, and messages around them are applied in order."""
    workers.start(1)
    eid = id_in_partition("counter", 0, "garbage")
    queue = queue_of("counter", eid)
    marker = tmp_path / "unpickled"
    pickled_id = str(uuid.uuid4())
    pickled = envelope(
        ["counter", eid, {"op": "increment"}],
        task_id=pickled_id,
        content_type="application/x-python-serialize",
        body=pickle.dumps(Marker(marker)),
        queue=queue,
    )
    before = send("counter", eid, "increment", 1)
    for raw in [
        b"\x00\xffnot json at all",
        b'{"body": "e30=", "properties": {}}',
        pickled,
        envelope([1, 2], task="some.other.task", queue=queue),
    ]:
        redis_client.lpush(queue, raw)
    after = send("counter", eid, "increment", 1)
    assert before.get(timeout=REPLY_TIMEOUT_S) == 1
    assert after.get(timeout=REPLY_TIMEOUT_S) == 2
    with pytest.raises(BadMessage, match="content type"):
        result(pickled_id).get(timeout=REPLY_TIMEOUT_S)
    assert not marker.exists()
    letters = eventually(lambda: len(dead_letters(store)) >= 4 and dead_letters(store))
    assert {d.queue for d in letters} == {queue}
    reasons = " | ".join(d.reason for d in letters)
    assert "not a Celery message" in reasons
    assert "application/x-python-serialize" in reasons
    assert "some.other.task" in reasons
    assert any("not json at all" in d.raw for d in letters)
    assert call("counter", eid, "get") == 2


def test_garbage_on_the_default_queue_never_stops_the_worker(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, when garbage lands on Celery's default queue, then the worker keeps
    running, forwarding by-name messages and serving its partitions."""
    [worker] = workers.start(1)
    for raw in [
        b"not json at all",
        b'{"no": "headers"}',
        envelope(
            ["counter", "x", {"op": "increment"}],
            content_type="application/x-python-serialize",
            body=pickle.dumps([1]),
        ),
    ]:
        redis_client.lpush("celery", raw)
    task_id = f"after-garbage-{uuid.uuid4()}"
    redis_client.lpush(
        "celery", envelope(["counter", "dq", {"op": "increment", "args": [3]}], task_id=task_id)
    )
    forwarded = result(task_id)
    eventually(lambda: forwarded.ready() or not worker.alive(), timeout_s=REPLY_TIMEOUT_S)
    assert worker.alive(), worker.output()[-2000:]
    assert forwarded.get(timeout=REPLY_TIMEOUT_S) == 3
    assert call("counter", "dq", "increment", 1) == 4
    assert worker.alive()


HOSTILE_IDS = ["", "x" * 10_000, "nul\x00id", "lone \ud800 surrogate"]


@pytest.mark.parametrize("entity_id", HOSTILE_IDS, ids=["empty", "10k", "nul", "surrogate"])
def test_hostile_ids_are_bad_message_at_the_client(entity_id: str) -> None:
    """Given a hostile entity id, when a client sends to it, then BadMessage before sending."""
    with pytest.raises(BadMessage):
        send("counter", entity_id, "increment")


def test_hostile_ids_that_reach_a_worker_are_bad_message(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given messages with hostile ids pushed past the client's checks onto a partition
    queue and onto the default queue, then each caller gets BadMessage and both keep serving."""
    workers.start(1)
    queue = queue_of("counter", "ok")
    task_ids = []
    for entity_id in HOSTILE_IDS:
        for target in (queue, "celery"):
            task_id = str(uuid.uuid4())
            task_ids.append(task_id)
            raw = envelope(
                ["counter", entity_id, {"op": "increment"}], task_id=task_id, queue=target
            )
            redis_client.lpush(target, raw)
    for task_id in task_ids:
        with pytest.raises(BadMessage):
            result(task_id).get(timeout=REPLY_TIMEOUT_S)
    assert call("counter", "ok", "increment", 1) == 1


@pytest.mark.parametrize("task_id", ["k" * 300, "nul\x00key"], ids=["300 chars", "nul"])
def test_a_task_id_the_store_cannot_record_is_refused_not_retried_forever(  # type: ignore[no-untyped-def]
    workers, store, task_id: str
) -> None:
    """Given a client idempotency key too long (or with NUL) to record, when it is used as
    task id, then the caller gets BadMessage, nothing is applied, and the partition serves on."""
    workers.start(1)
    with pytest.raises(BadMessage, match="task id"):
        send("counter", "long-key", "increment", 1, task_id=task_id).get(timeout=REPLY_TIMEOUT_S)
    assert call("counter", "long-key", "increment", 1) == 1
    assert any("task id" in d.reason for d in store.dead_letters())
