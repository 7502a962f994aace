"""No message content can stall a partition: runtime ops are checked like user ops, and a
value the store refuses is that one message's error, never an endless retry."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from entities.errors import BadMessage, DataRefused, StoreError
from entities.messages import validate_message
from entities.routing import partition_for, queue_name
from entities.transport import celery_message


def _push(redis_client: Any, entity_type: str, entity_id: str, msg: dict[str, Any]) -> str:
    """Puts one raw send_to_entity call on the entity's partition queue; returns its task id."""
    raw = celery_message(entity_type, entity_id, msg)
    partition = partition_for(entity_type, entity_id, int(os.environ["ENTITIES_PARTITIONS"]))
    redis_client.lpush(queue_name(partition), raw)
    return str(json.loads(raw)["headers"]["id"])


@pytest.mark.no_services
@pytest.mark.parametrize(
    ("msg", "problem"),
    [
        ({"op": "__alarm__", "args": ["a\x00b", "s", 0]}, "alarm name must not contain NUL"),
        ({"op": "__alarm__", "args": ["a\ud800", "s", 0]}, "alarm name .* lone surrogate"),
        ({"op": "__alarm__", "args": ["", "s", 0]}, "alarm name must not be empty"),
        ({"op": "__alarm__", "args": ["n" * 256, "s", 0]}, "alarm name is 256 characters"),
        ({"op": "__alarm__", "args": [1, "s", 0]}, "alarm name must be a str"),
        ({"op": "__alarm__", "args": ["n", "s\x00", 0]}, "scheduling id must not contain NUL"),
        ({"op": "__alarm__", "args": ["n", "s" * 65, 0]}, "scheduling id is 65 characters"),
        ({"op": "__alarm__", "args": ["n", "s", True]}, "attempt must be an int"),
        ({"op": "__alarm__", "args": ["n", "s", 1.0]}, "attempt must be an int"),
        ({"op": "__alarm__", "args": ["n", "s", -1]}, "attempt must be 0"),
        ({"op": "__alarm__", "args": ["n", "s", 2**40]}, "attempt must be 0"),
        ({"op": "__alarm__", "args": ["n", "s"]}, "takes args \\[name, scheduling_id, attempt\\]"),
        ({"op": "__alarm__", "args": ["n", "s", 0], "kwargs": {"x": 1}}, "takes no kwargs"),
        ({"op": "__delete__", "args": [1]}, "takes no args"),
        ({"op": "__clear_alarms__", "args": ["x"]}, "takes no args"),
        ({"op": "__set_alarm__", "args": ["a\x00b", None]}, "alarm name: .*NUL"),
        ({"op": "__set_alarm__", "args": ["n", 5]}, "fire_at must be an ISO 8601 str"),
        (
            {"op": "__set_alarm__", "args": ["n", "2030-01-01T00:00:00+00:00", {"k": "a\x00"}]},
            "payload.*NUL character",
        ),
        ({"op": "__set_alarm__", "args": ["n", None], "kwargs": {"x": 1}}, "takes no kwargs"),
    ],
    ids=repr,
)
def test_runtime_ops_are_checked_like_user_ops(msg: dict[str, Any], problem: str) -> None:
    """Given a runtime op whose arguments the store could not take or do not fit, then the
    message parser refuses it with BadMessage naming the problem."""
    with pytest.raises(BadMessage, match=problem):
        validate_message("counter", "x", msg)


@pytest.mark.no_services
def test_well_formed_runtime_ops_pass() -> None:
    """Given the runtime's own messages as the alarm dispatcher and delete send them, they pass."""
    assert validate_message("c", "i", {"op": "__alarm__", "args": ["n", "a" * 32, 3]})[1] == [
        "n",
        "a" * 32,
        3,
    ]
    assert validate_message("c", "i", {"op": "__delete__"})[0] == "__delete__"
    assert validate_message("c", "i", {"op": "__clear_alarms__"})[0] == "__clear_alarms__"
    when = "2030-01-01T00:00:00+00:00"
    assert validate_message("c", "i", {"op": "__set_alarm__", "args": ["n", when, {"k": 1}]})
    assert validate_message("c", "i", {"op": "__set_alarm__", "args": ["n", None]})


@pytest.mark.parametrize("name", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
def test_an_alarm_message_with_an_unstorable_name_does_not_stall_its_partition(  # type: ignore[no-untyped-def]
    workers, redis_client, name: str
) -> None:
    """Given a worker, when a raw __alarm__ message whose name Postgres cannot take lands on a
    partition, followed by an ordinary message, then the alarm message gets BadMessage and
    the ordinary one is applied."""
    from workers import app

    workers.start(1)
    bad = _push(redis_client, "counter", "stall", {"op": "__alarm__", "args": [name, "s", 0]})
    good = _push(redis_client, "counter", "stall", {"op": "increment"})
    with pytest.raises(BadMessage, match="alarm name"):
        app.AsyncResult(bad).get(timeout=30)
    assert app.AsyncResult(good).get(timeout=30) == 1


@pytest.mark.parametrize("name", ["a\x00b", "a\ud800b"], ids=["nul", "surrogate"])
def test_a_value_postgres_refuses_is_data_refused(store, name: str) -> None:  # type: ignore[no-untyped-def]
    """Given a lookup or a commit carrying text Postgres cannot hold, then the store raises
    DataRefused (the data's fault), not a plain StoreError a worker would retry forever."""
    from entities.store import CommitBatch, Write

    with pytest.raises(DataRefused, match="cannot take this data"):
        store.get_alarm("counter", "x", name)
    with pytest.raises(DataRefused):
        store.commit(CommitBatch(0, None, writes=[Write("counter", "x", 0, 1, {"count": name})]))


def test_an_unreachable_store_is_not_refused_data() -> None:
    """Given a store that cannot be reached, then its error is a StoreError the worker
    retries, not DataRefused."""
    from entities.store.sql import SQLStore

    store = SQLStore("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(StoreError) as info:
        store.get_alarm("counter", "x", "n")
    assert not isinstance(info.value, DataRefused)
