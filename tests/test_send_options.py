"""Send options: countdown, eta, expires, link, link_error and chains are honoured by a
real worker; what cannot hold is refused with BadMessage naming the option."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from typing import Any

import pytest
from celery import signature

from entities import MessageExpired, read
from entities.delayed import delayed_key
from entities.errors import BadMessage
from tests.delivery import REPLY_TIMEOUT_S, partition_of, queue_of
from tests.fixture_entities import Boom

INCREMENT = {"op": "increment"}


def notes(redis_client: Any, key: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """The values noted under ``key`` once there are ``count`` (or what there is at timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and redis_client.llen(key) < count:
        time.sleep(0.05)
    return [json.loads(v) for v in redis_client.lrange(key, 0, -1)]


def test_a_countdown_is_applied_not_before_it_is_due_and_then_applied(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker, when a call is sent with countdown=2, then nothing is applied for
    2 s and then it is applied and replied to."""
    from workers import send_to_entity

    workers.start(1)
    sent_at = time.monotonic()
    result = send_to_entity.apply_async(("counter", "cd", INCREMENT), countdown=2)
    time.sleep(1.5)
    assert read("counter", "cd") is None
    assert result.get(timeout=REPLY_TIMEOUT_S) == 1
    assert time.monotonic() - sent_at >= 2.0


def test_an_eta_waits_in_the_delayed_set_and_survives_a_kill_9(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a call sent with an eta 3 s ahead, then it waits in its partition's delayed
    set, not on the queue; when the worker is killed with SIGKILL and another starts,
    then the call is applied once, not before its eta."""
    from workers import send_to_entity

    [first] = workers.start(1)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    result = send_to_entity.apply_async(("counter", "eta", INCREMENT), eta=eta)
    assert redis_client.zcard(delayed_key(partition_of("counter", "eta"))) == 1
    assert redis_client.llen(queue_of("counter", "eta")) == 0
    first.kill(signal.SIGKILL)
    workers.start(1)
    assert result.get(timeout=REPLY_TIMEOUT_S) == 1
    assert dt.datetime.now(dt.UTC) >= eta
    assert read("counter", "eta").state == {"count": 1}  # type: ignore[union-attr]


def test_an_eta_on_celerys_publish_is_delayed_by_the_owner(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a call Celery publishes itself (extra headers) with countdown=2, which
    lands on the partition queue, then its owner does not apply it before it is due."""
    from workers import send_to_entity

    workers.start(1)
    sent_at = time.monotonic()
    result = send_to_entity.apply_async(
        ("counter", "celery-eta", INCREMENT), countdown=2, headers={"x-trace": "t"}
    )
    time.sleep(1.0)
    assert read("counter", "celery-eta") is None
    assert result.get(timeout=REPLY_TIMEOUT_S) == 1
    assert time.monotonic() - sent_at >= 2.0


def test_an_eta_on_the_default_queue_is_delayed_durably(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a client without our router sending to Celery's default queue with
    countdown=3, when the worker that took the call is killed with SIGKILL before it is
    due and another starts, then the call is applied once, not before it is due."""
    from workers import app, send_to_entity

    [first] = workers.start(1)
    sent_at = time.monotonic()
    result = app.send_task(
        send_to_entity.name,
        args=["counter", "foreign-eta", INCREMENT],
        queue="celery",
        countdown=3,
    )
    delayed = delayed_key(partition_of("counter", "foreign-eta"))
    while not redis_client.zcard(delayed) and time.monotonic() - sent_at < 2:
        time.sleep(0.02)  # (kombu itself may lose a message popped but not yet handled)
    assert redis_client.llen("celery") == 0  # taken by the worker
    first.kill(signal.SIGKILL)
    assert read("counter", "foreign-eta") is None
    workers.start(1)
    assert result.get(timeout=REPLY_TIMEOUT_S) == 1
    assert time.monotonic() - sent_at >= 3.0
    assert read("counter", "foreign-eta").state == {"count": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize("path", ["direct", "celery"])
def test_an_expired_call_gets_an_error_reply_and_changes_nothing(workers, path: str) -> None:  # type: ignore[no-untyped-def]
    """Given a call whose expiry time has passed, then its reply raises MessageExpired and
    the entity's state is unchanged."""
    from workers import send_to_entity

    workers.start(1)
    assert send_to_entity.delay("counter", "exp", INCREMENT).get(timeout=REPLY_TIMEOUT_S) == 1
    extra = {} if path == "direct" else {"headers": {"x-trace": "t"}}
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    result = send_to_entity.apply_async(("counter", "exp", INCREMENT), expires=past, **extra)
    with pytest.raises(MessageExpired, match="expired"):
        result.get(timeout=REPLY_TIMEOUT_S)
    assert read("counter", "exp").state == {"count": 1}  # type: ignore[union-attr]
    later = send_to_entity.apply_async(("counter", "exp", INCREMENT), expires=60, **extra)
    assert later.get(timeout=REPLY_TIMEOUT_S) == 2


def test_a_link_fires_once_with_the_reply_even_when_resent(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a call with two links, sent twice with one task id, then each link runs
    once, with the reply as its first argument and the call as its parent."""
    from workers import send_to_entity

    workers.start(1)
    links = [
        signature("tests.note_reply", args=("linked",)),
        signature("tests.note_ids", args=("ids",)),
    ]
    for _ in range(2):
        result = send_to_entity.apply_async(
            ("counter", "ln", {"op": "increment", "args": [7]}), task_id="link-1", link=links
        )
        assert result.get(timeout=REPLY_TIMEOUT_S) == 7
    assert notes(redis_client, "linked", 1) == [7]
    assert notes(redis_client, "ids", 1) == [[7, "link-1", "link-1"]]
    time.sleep(1.5)
    assert notes(redis_client, "linked", 2, timeout_s=0) == [7]
    assert len(notes(redis_client, "ids", 2, timeout_s=0)) == 1
    assert read("counter", "ln").state == {"count": 7}  # type: ignore[union-attr]


def test_a_link_of_a_relaxed_entity_fires_after_the_commit(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given an on_stop entity (which commits only when it stops), when a call with a
    link is sent, then the call is committed before its reply and its link fire."""
    from workers import send_to_entity

    workers.start(1)
    result = send_to_entity.apply_async(
        ("on_stop_counter", "relaxed", {"op": "increment"}),
        link=signature("tests.note_reply", args=("relaxed",)),
    )
    assert result.get(timeout=REPLY_TIMEOUT_S) == 1
    assert read("on_stop_counter", "relaxed").state == {"count": 1}  # type: ignore[union-attr]
    assert notes(redis_client, "relaxed", 1) == [1]


def test_a_link_on_a_call_sent_by_name_to_the_default_queue_fires(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a client without our router sending by name to Celery's default queue with
    a link, then the call is forwarded with its link, which fires with the reply."""
    from workers import app, send_to_entity

    workers.start(1)
    result = app.send_task(
        send_to_entity.name,
        args=["counter", "by-name", {"op": "increment", "args": [4]}],
        queue="celery",
        link=signature("tests.note_reply", args=("by-name",)),
    )
    assert result.get(timeout=REPLY_TIMEOUT_S) == 4
    assert notes(redis_client, "by-name", 1) == [4]


def test_a_link_error_fires_on_a_handler_error(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a call whose handler raises, sent with link and link_error, then the errback
    gets the call's task id and the link does not run."""
    from workers import send_to_entity

    workers.start(1)
    result = send_to_entity.apply_async(
        ("fragile", "le", {"op": "set_then_fail", "args": [3]}),
        link=signature("tests.note_reply", args=("ok-key",)),
        link_error=signature("tests.note_error", args=("err-key",)),
    )
    with pytest.raises(Boom):
        result.get(timeout=REPLY_TIMEOUT_S)
    assert notes(redis_client, "err-key", 1) == [result.id]
    assert redis_client.llen("ok-key") == 0


def test_a_chain_passes_the_reply_and_an_immutable_step_gets_none(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given chains a|b, then b gets a's reply; given a|b.si(), then b gets no argument;
    given entity|entity.si(), then both entities apply their call."""
    from workers import send_to_entity

    workers.start(1)
    (
        send_to_entity.s("counter", "ch", {"op": "increment", "args": [5]})
        | signature("tests.note_reply", args=("chained",))
    ).apply_async()
    assert notes(redis_client, "chained", 1) == [5]
    (
        send_to_entity.s("counter", "ch", {"op": "increment"})
        | signature("tests.note_call", args=("immutable",), immutable=True)
    ).apply_async()
    assert notes(redis_client, "immutable", 1) == ["ran"]
    last = (
        send_to_entity.s("counter", "ch", {"op": "increment"})
        | send_to_entity.si("counter", "ch-next", {"op": "increment", "args": [10]})
    ).apply_async()
    assert last.get(timeout=REPLY_TIMEOUT_S) == 10
    assert read("counter", "ch").state == {"count": 7}  # type: ignore[union-attr]


def test_celerys_bookkeeping_options_are_kept(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given the options Celery keeps for itself (headers, ids, publish retry, the JSON
    serializer, ignore_result), then they are accepted and the calls applied (a guard:
    none of them is refused)."""
    from workers import send_to_entity

    workers.start(1)
    kept = send_to_entity.apply_async(
        ("counter", "kept", INCREMENT),
        headers={"x-trace": "t-1"},
        root_id="root-1",
        parent_id="parent-1",
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0},
        serializer="json",
        shadow="counter.increment",
    )
    assert kept.get(timeout=REPLY_TIMEOUT_S) == 1
    silent = send_to_entity.apply_async(("counter", "kept", INCREMENT), ignore_result=True)
    assert send_to_entity.delay("counter", "kept", {"op": "get"}).get(REPLY_TIMEOUT_S) == 2
    assert redis_client.get(f"celery-task-meta-{silent.id}") is None


REFUSED = [
    ("queue", {"queue": "elsewhere"}),
    ("routing_key", {"routing_key": "elsewhere"}),
    ("exchange", {"exchange": "elsewhere"}),
    ("serializer", {"serializer": "pickle"}),
    ("compression", {"compression": "gzip"}),
    ("time_limit", {"time_limit": 5}),
    ("priority", {"priority": 3}),
]


@pytest.mark.parametrize(("name", "options"), REFUSED, ids=[n for n, _ in REFUSED])
def test_an_option_that_cannot_hold_is_refused_naming_it(  # type: ignore[no-untyped-def]
    redis_client, name: str, options: dict[str, Any]
) -> None:
    """Given a send option that would strand the call or be silently ignored, then
    apply_async and the entities client raise BadMessage naming it and nothing is sent."""
    from entities.client import send
    from workers import send_to_entity

    with pytest.raises(BadMessage, match=name):
        send_to_entity.apply_async(("counter", "refused", INCREMENT), **options)
    with pytest.raises(BadMessage, match=name):
        send("counter", "refused", INCREMENT, **options)
    assert not [k for k in redis_client.keys("entities.{p*}") if not k.endswith(b".lease")]


def test_a_callback_with_an_option_that_cannot_hold_is_refused_at_send(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a link that is an entity call with a queue override, then the send raises
    BadMessage naming it and nothing is sent (the worker could only log it later)."""
    from workers import send_to_entity

    bad = send_to_entity.si("counter", "next", INCREMENT).set(queue="elsewhere")
    with pytest.raises(BadMessage, match="queue"):
        send_to_entity.apply_async(("counter", "cb", INCREMENT), link=bad)
    assert not [k for k in redis_client.keys("entities.{p*}") if not k.endswith(b".lease")]


def test_a_foreign_message_with_a_chord_or_time_limit_gets_bad_message(workers) -> None:  # type: ignore[no-untyped-def]
    """Given messages from a client that did not check its options (a chord, a time
    limit), then each gets a BadMessage reply naming the option and changes nothing."""
    from workers import app, send_to_entity

    workers.start(1)
    limited = app.send_task(send_to_entity.name, args=["counter", "f", INCREMENT], time_limit=5)
    with pytest.raises(BadMessage, match="time limits"):
        limited.get(timeout=REPLY_TIMEOUT_S)
    assert read("counter", "f") is None


def envelope_with(
    headers: dict[str, Any] | None = None, embed: dict[str, Any] | None = None
) -> Any:
    """A parsed send_to_entity message whose headers and embed are changed as given."""
    import base64

    from entities.messages import parse_envelope
    from entities.transport import celery_message

    outer = json.loads(celery_message("counter", "u", INCREMENT, "t-1"))
    outer["headers"].update(headers or {})
    args, kwargs, old = json.loads(base64.b64decode(outer["body"]))
    body = json.dumps([args, kwargs, {**old, **(embed or {})}]).encode()
    outer["body"] = base64.b64encode(body).decode()
    return parse_envelope(json.dumps(outer).encode(), 1 << 20)


@pytest.mark.no_services
@pytest.mark.parametrize(
    ("headers", "embed", "named"),
    [
        ({"eta": "tomorrow"}, None, "eta"),
        ({"expires": 12}, None, "expires"),
        ({"timelimit": [5, None]}, None, "time limits"),
        (None, {"chord": {"task": "x"}}, "chord"),
        (None, {"callbacks": "tests.note_reply"}, "callbacks"),
    ],
)
def test_a_received_option_that_cannot_hold_is_a_bad_message(
    headers: dict[str, Any] | None, embed: dict[str, Any] | None, named: str
) -> None:
    """Given a message whose options cannot be honoured, then parsing it gives a
    BadMessage naming the option, and the message keeps its task id for the reply."""
    env = envelope_with(headers, embed)
    assert env.task_id == "t-1"
    assert env.bad is not None and named in str(env.bad)


@pytest.mark.no_services
def test_received_options_are_read_in_the_workers_terms() -> None:
    """Given an eta, an expiry and callbacks, then the envelope has them as epoch seconds
    and a links record with the root id; a plain message has none of them."""
    eta = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    env = envelope_with(
        {"eta": eta.isoformat(), "expires": "2030-01-02T00:00:00"},
        {"callbacks": [{"task": "tests.note_reply", "args": ["k"]}]},
    )
    assert env.bad is None
    assert env.eta == eta.timestamp()
    assert env.expires == eta.timestamp() + 86400  # a naive time is UTC
    assert env.links == {
        "callbacks": [{"task": "tests.note_reply", "args": ["k"]}],
        "root_id": "t-1",
    }
    plain = envelope_with()
    assert (plain.eta, plain.expires, plain.links) == (None, None, None)
