"""Messages: ids and message shapes are checked; raw envelopes are parsed, never trusted.

parse_envelope never raises: what it cannot understand is recorded as an error
(dead-lettered by the worker), and a malformed entity message keeps its task
id so its caller gets a BadMessage reply.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from entities import BadMessage, UnknownHandler
from entities.messages import parse_envelope, validate_id, validate_message
from tests.delivery import envelope, queue_of

LIMIT = 256 << 10


def parse(raw: bytes) -> Any:
    return parse_envelope(raw, LIMIT)


def test_a_message_written_by_the_celery_client_parses(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a message sent with send_to_entity.apply_async, when its raw form is parsed,
    then it yields the task id, the entity and the call."""
    from workers import send_to_entity

    sent = send_to_entity.apply_async(
        ("counter", "p1", {"op": "increment", "args": [5], "kwargs": {}}, "strict"),
        task_id="parse-me",
    )
    [raw] = redis_client.lrange(queue_of("counter", "p1"), 0, -1)
    env = parse(raw)
    assert (env.error, env.bad) == (None, None)
    assert env.task_id == sent.id == "parse-me"
    assert env.key == ("counter", "p1")
    assert (env.op, env.args, env.kwargs, env.durability) == ("increment", [5], {}, "strict")


def test_keyword_arguments_of_the_task_are_understood() -> None:
    """Given send_to_entity called with keyword arguments, then the call is the same."""
    env = parse(envelope([], {"entity_type": "c", "entity_id": "i", "msg": {"op": "get"}}))
    assert (env.error, env.bad, env.key, env.op) == (None, None, ("c", "i"), "get")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\xff garbage", "not a Celery message"),
        (b"[1, 2, 3]", "not a Celery message"),
        (b'{"body": "e30="}', "not a Celery message"),
        (b'{"headers": [], "body": ""}', "headers are not an object"),
        (envelope([1], task="other.task"), "other.task"),
        (envelope(["c", "i", {"op": "get"}], task_id=""), "id=''"),
        (envelope([], body=b"not json"), "not a JSON"),
        (envelope([], body=b"[1, 2]"), "not a JSON"),
        (envelope(["c", "i", {"op": "set", "args": ["x" * LIMIT * 2]}]), "exceeds the limit"),
        (envelope(["c", "i", {"op": "set", "args": ["x" * (LIMIT + 1)]}]), "exceeds the limit"),
    ],
    ids=[
        "binary",
        "json list",
        "no headers",
        "headers list",
        "other task",
        "empty task id",
        "body not json",
        "body not a triple",
        "huge envelope",
        "huge body",
    ],
)
def test_what_cannot_be_understood_is_an_error_with_a_reason(raw: bytes, reason: str) -> None:
    """Given a raw message that is not a send_to_entity call, then error says why."""
    env = parse(raw)
    assert env.error is not None
    assert reason in env.error


def test_a_pickle_message_is_refused_without_unpickling_and_keeps_its_task_id() -> None:
    """Given a pickle-encoded call, then it is refused by content type, its body untouched."""
    raw = envelope(
        [],
        task_id="t-pickle",
        content_type="application/x-python-serialize",
        body=pickle.dumps(["c", "i", {"op": "get"}]),
    )
    env = parse(raw)
    assert env.error is not None and "application/x-python-serialize" in env.error
    assert env.task_id == "t-pickle"


@pytest.mark.parametrize(
    ("task_id", "replied"),
    [("k" * 256, True), ("nul\x00", True), ("lone \ud800", False), (7, False)],
    ids=["too long", "nul", "surrogate", "not a str"],
)
def test_a_task_id_the_store_cannot_record_is_an_error(task_id: Any, replied: bool) -> None:
    """Given a task id that cannot be a processed-message key, then the message is an error;
    it is still replied to under that id when the id can be a result key."""
    env = parse(envelope(["c", "i", {"op": "get"}], task_id=task_id))
    assert env.error is not None
    assert bool(env.task_id) is replied


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (["c", "i"], {}, "takes (entity_type"),
        (["c", "i", {"op": "get"}, None, "extra"], {}, "takes (entity_type"),
        (["c", "i", {"op": "get"}], {"entity_id": "j"}, "unexpected arguments"),
        (["c", "i", {"op": "get"}], {"colour": 1}, "unexpected arguments"),
        (["c", "i", {"op": "get"}, "sometimes"], {}, "durability"),
        (["c", "", {"op": "get"}], {}, "entity id must not be empty"),
        (["c", 5, {"op": "get"}], {}, "entity id must be a str"),
        (["c", "i", {"op": ""}], {}, "needs 'op'"),
        (["c", "i", {"op": "get", "args": {}}], {}, "'args' must be a list"),
        (["c", "i", {"op": "get", "kwargs": []}], {}, "'kwargs' must be a dict"),
    ],
    ids=repr,
)
def test_a_malformed_call_is_bad_message_with_its_task_id(
    args: list[Any], kwargs: dict[str, Any], problem: str
) -> None:
    """Given a send_to_entity call with malformed arguments, then `bad` names the problem
    and the task id is kept, so the caller gets BadMessage instead of waiting forever."""
    env = parse(envelope(args, kwargs, task_id="t-bad"))
    assert env.error is None
    assert isinstance(env.bad, BadMessage)
    assert problem in str(env.bad)
    assert env.task_id == "t-bad"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "must be a str"),
        ("", "must not be empty"),
        ("x" * 256, "256 characters long"),
        ("a\x00b", "NUL"),
        ("a\ud800b", "surrogate"),
    ],
    ids=repr,
)
def test_hostile_ids_are_refused(value: Any, problem: str) -> None:
    """Given a hostile id, then validate_id raises BadMessage naming the problem."""
    with pytest.raises(BadMessage, match=problem):
        validate_id("entity id", value)


def test_fine_ids_pass_unchanged() -> None:
    """Given ids with spaces, quotes, SQL and unicode, within 255 characters, they pass."""
    for value in ["a", "x" * 255, "Robert'); DROP TABLE students;--", "ünï €", "a b/c"]:
        assert validate_id("entity id", value) == value


def test_runtime_ops_are_allowed_but_other_private_ops_are_unknown_handlers() -> None:
    """Given ops starting with _, then only the runtime's own are accepted; any other is
    no handler, so it is UnknownHandler, as the contract says of an op that is no handler."""
    assert validate_message("c", "i", {"op": "__delete__"})[0] == "__delete__"
    for op in ("__init__", "_helper"):
        with pytest.raises(UnknownHandler, match=op):
            validate_message("c", "i", {"op": op})
