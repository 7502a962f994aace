"""Fuzzing the message and id space with hypothesis.

In-process: the envelope parser and the message validator never raise
anything but their documented outcome, for any bytes, any JSON and any
envelope-shaped document; well-formed calls survive the round trip exactly.
Then a short run pushes generated hostile messages through a real worker's
default queue and a partition queue, and the worker keeps answering.
"""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from celery.result import AsyncResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.transport import virtual

from entities import BadMessage, UnknownHandler
from entities.messages import MAX_ID_LENGTH, parse_envelope, validate_id, validate_message
from entities.routing import TASK_NAME, partition_for, queue_name
from tests.test_cluster_kit import call, envelope
from workers.consumer import screen

MAX_BYTES = 4096

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.text(min_size=1, max_size=MAX_ID_LENGTH).filter(
    lambda s: "\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
)
hostile_ids = st.one_of(
    st.text(max_size=300),
    st.integers(),
    st.none(),
    st.binary(max_size=8).map(str),
    st.sampled_from(["", "\x00", "\ud800", "x" * 256, "'; DROP TABLE x; --", "%s"]),
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Envelope-shaped documents whose every part may be valid, odd, or plain wrong."""
    args = draw(
        st.one_of(
            st.tuples(hostile_ids, hostile_ids, json_values).map(list),
            st.tuples(
                ids,
                ids,
                st.fixed_dictionaries(
                    {"op": st.text(max_size=10)},
                    optional={"args": json_values, "kwargs": json_values},
                ),
            ).map(list),
            json_values,
        )
    )
    body = draw(
        st.one_of(
            st.just(json.dumps([args, draw(json_values | st.just({})), {}]).encode()),
            st.binary(max_size=64),
        )
    )
    doc: dict[str, Any] = json.loads(
        envelope(
            args,
            task=draw(st.sampled_from([TASK_NAME, "other.task", None, 5])),
            task_id=draw(st.one_of(st.uuids().map(str), hostile_ids)),
            content_type=draw(
                st.sampled_from(
                    ["application/json", "application/x-python-serialize", "text/plain", ""]
                )
            ),
            body=body,
        )
    )
    for key in ("body", "headers", "properties", "content-type"):
        if draw(st.integers(0, 3)) == 0:  # each part is wrong a quarter of the time
            doc[key] = draw(json_values)
    if isinstance(doc.get("properties"), dict) and draw(st.booleans()):
        doc["properties"]["body_encoding"] = draw(st.sampled_from(["base64", None, "rot13", 5]))
    if isinstance(doc.get("headers"), dict) and draw(st.booleans()):
        key = draw(st.sampled_from(["ignore_result", "task", "id", "stamped_headers", "eta"]))
        doc["headers"][key] = draw(json_values)
    return json.dumps(doc).encode()


class StubChannel:
    """Just enough of a kombu virtual channel for kombu's Message to decode a payload."""

    Message = virtual.Message
    codecs = virtual.Channel.codecs
    decode_body = virtual.Channel.decode_body


unit = pytest.mark.no_services


#: Examples per property: a short run by default, a deep one with ``pytest -m slow``.
DEPTHS = [pytest.param(100, id="short"), pytest.param(2000, id="deep", marks=pytest.mark.slow)]


def fuzz(examples: int, *strategies: st.SearchStrategy[Any]) -> Any:
    """Runs the decorated property over ``examples`` draws of ``strategies``."""
    return lambda fn: settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )(given(*strategies)(fn))()


@unit
@pytest.mark.parametrize("examples", DEPTHS)
def test_any_bytes_or_json_parse_to_a_refusal_without_raising(examples: int) -> None:
    @fuzz(
        examples,
        st.one_of(st.binary(max_size=512), json_values.map(lambda v: json.dumps(v).encode())),
    )
    def check(raw: bytes) -> None:
        env = parse_envelope(raw, MAX_BYTES)
        assert env.error is not None


@unit
def test_integers_beyond_64_bits_in_a_message_arrive_exactly() -> None:
    big = [-(2**63) - 1, 2**64, 10**30, -(10**40), 2**63 - 1, -(2**63)]
    env = parse_envelope(envelope(["tally", "t", {"op": "add", "args": big}]), 1 << 20)
    assert env.args == big and all(isinstance(n, int) for n in env.args)


@unit
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_refused_not_raised(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    assert parse_envelope(nested, 1 << 20).error is not None
    assert parse_envelope(envelope(None, body=nested), 1 << 20).error is not None
    assert screen(nested, StubChannel()) is not None


@unit
@pytest.mark.parametrize("examples", DEPTHS)
def test_envelope_shaped_garbage_is_refused_or_fully_valid(examples: int) -> None:
    @fuzz(examples, envelopes())
    def check(raw: bytes) -> None:
        env = parse_envelope(raw, MAX_BYTES)
        if env.error is None and env.bad is None:
            validate_id("task id", env.task_id)
            assert validate_message(
                env.entity_type,
                env.entity_id,
                {"op": env.op, "args": env.args, "kwargs": env.kwargs},
            )
        if env.bad is not None:
            assert isinstance(env.bad, (BadMessage, UnknownHandler)) and str(env.bad)


@unit
@pytest.mark.parametrize("examples", DEPTHS)
def test_well_formed_calls_round_trip_exactly(examples: int) -> None:
    @fuzz(
        examples,
        ids,
        ids,
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=20),
        st.lists(json_values, max_size=3),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    )
    def check(
        entity_type: str, entity_id: str, op: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        raw = envelope(
            [entity_type, entity_id, {"op": op, "args": args, "kwargs": kwargs}], task_id="t-1"
        )
        env = parse_envelope(raw, 1 << 20)
        assert (env.error, env.bad) == (None, None)
        assert (env.task_id, env.entity_type, env.entity_id) == ("t-1", entity_type, entity_id)
        assert (env.op, env.args, env.kwargs) == (op, args, kwargs)
        assert 0 <= partition_for(entity_type, entity_id, 16) < 16


@unit
@pytest.mark.parametrize("examples", DEPTHS)
def test_validate_message_raises_only_bad_message_or_unknown_handler(examples: int) -> None:
    @fuzz(examples, hostile_ids, hostile_ids, json_values)
    def check(entity_type: Any, entity_id: Any, msg: Any) -> None:
        try:
            op, args, kwargs = validate_message(entity_type, entity_id, msg)
        except UnknownHandler as exc:  # an op starting with _ that is no runtime op
            assert msg["op"].startswith("_") and str(exc)
            return
        except BadMessage as exc:
            assert str(exc)
            return
        assert isinstance(op, str) and isinstance(args, list) and isinstance(kwargs, dict)
        assert 0 < len(entity_id) <= MAX_ID_LENGTH and "\x00" not in entity_id


@unit
@pytest.mark.parametrize("examples", DEPTHS)
def test_ids_are_bounded_storable_text(examples: int) -> None:
    @fuzz(examples, hostile_ids)
    def check(value: Any) -> None:
        ok = (
            isinstance(value, str)
            and 0 < len(value) <= MAX_ID_LENGTH
            and "\x00" not in value
            and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        )
        if ok:
            assert validate_id("entity id", value) == value
        else:
            with pytest.raises(BadMessage):
                validate_id("entity id", value)


@unit
@pytest.mark.parametrize("examples", DEPTHS)
def test_the_default_queue_screen_never_raises(examples: int) -> None:
    @fuzz(
        examples,
        st.one_of(
            st.binary(max_size=256), envelopes(), json_values.map(lambda v: json.dumps(v).encode())
        ),
    )
    def check(raw: bytes) -> None:
        reason = screen(raw, StubChannel())
        assert reason is None or reason.startswith("not a Celery message")


def test_generated_hostile_messages_never_stop_a_real_worker(
    workers,
    redis_client,  # type: ignore[no-untyped-def]
) -> None:
    """Given a worker, when generated hostile messages land on the default queue and on a
    partition queue, then good calls behind them on both queues are answered."""
    (worker,) = workers.start(1)
    partition_queue = queue_name(partition_for("tally", "fuzz", 16))
    pushed: list[bytes] = []

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(envelopes(), st.binary(max_size=128)))
    def push(raw: bytes) -> None:
        pushed.append(raw)
        redis_client.lpush("celery", raw)
        redis_client.lpush(partition_queue, raw)

    push()
    redis_client.lpush("celery", call("tally", "fuzz", "add", task_id="good-default"))
    redis_client.lpush(
        partition_queue,
        call("tally", "fuzz", "add", task_id="good-partition", queue=partition_queue),
    )
    replies = {
        AsyncResult("good-default").get(timeout=60),
        AsyncResult("good-partition").get(timeout=60),
    }
    assert len(replies) == 2 and all(isinstance(r, int) and r >= 1 for r in replies)
    assert len(pushed) == 40
    assert worker.alive()
    assert "Unrecoverable error" not in worker.output()
