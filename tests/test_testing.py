"""The test kit's in-process harness: real apply and commit code, SQLite, a virtual clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

import entities
from entities import clock
from entities.client import get_store, set_store
from entities.messages import OP_ALARM, parse_envelope
from entities.testing import VirtualClock, celery_message
from tests.fixture_entities import Boom
from workers.testing import AlarmChainTooLong, Harness

pytestmark = pytest.mark.no_services

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def h() -> Iterator[Harness]:
    with Harness(start=T0) as harness:
        yield harness


def names(h: Harness, etype: str, eid: str) -> list[str]:
    return [a.name for a in h.alarms(etype, eid)]


# -- messages ---------------------------------------------------------------------------


def test_a_call_returns_the_reply_of_the_committed_state(h: Harness) -> None:
    """Given a counter, when incremented twice, then the replies are the committed counts."""
    assert h.call("counter", "a", "increment", 5) == 5
    assert h.call("counter", "a", "increment", amount=2) == 7
    snapshot = h.read("counter", "a")
    assert snapshot is not None
    assert (snapshot.state, snapshot.version, snapshot.updated_at) == ({"count": 7}, 2, T0)
    assert entities.read("counter", "a") == snapshot  # the client helpers see the harness


def test_errors_are_raised_like_async_result_get_and_change_nothing(h: Harness) -> None:
    """Given a handler that raises, an unknown op and an unknown type, then each raises its
    error and the committed state is unchanged."""
    h.call("fragile", "f", "set", 1)
    with pytest.raises(Boom, match="refusing 2"):
        h.call("fragile", "f", "set_then_fail", 2)
    with pytest.raises(entities.UnknownHandler):
        h.call("fragile", "f", "nope")
    with pytest.raises(entities.UnknownEntityType):
        h.call("no_such_type", "f", "get")
    with pytest.raises(entities.BadMessage):
        h.call("fragile", "f", "set", 1, 2, 3)
    assert h.call("fragile", "f", "get") == 1


def test_a_redelivered_message_is_applied_once(h: Harness) -> None:
    """Given a call with a task id, when delivered again, then it is applied once and the
    first reply comes back."""
    assert h.call("counter", "d", "increment", 3, task_id="once") == 3
    assert h.call("counter", "d", "increment", 3, task_id="once") == 3
    assert h.call("counter", "d", "get") == 3


def test_a_crash_loses_no_relaxed_change_and_doubles_no_strict_one(h: Harness) -> None:
    """Given unflushed changes of an interval entity and a committed strict one, when the
    runtime crashes, then the unacknowledged messages are applied again from the last
    commit, once, and the strict change is not applied twice."""
    assert [h.call("lazy_counter", "l", "increment") for _ in range(3)] == [1, 2, 3]
    assert h.read("lazy_counter", "l") is None  # held in memory until a flush
    h.call("counter", "s", "increment", 4)
    h.crash()
    h.flush()
    snapshot = h.read("lazy_counter", "l")
    assert snapshot is not None
    assert snapshot.state == {"count": 3, "loads": 1}  # re-applied on a fresh activation
    assert h.call("counter", "s", "get") == 4


def test_messages_sent_by_entities_are_delivered_after_the_commit(h: Harness) -> None:
    """Given a sender, when it forwards to a counter, then the counter receives it once."""
    h.call("sender", "s", "forward", "target", 5)
    assert h.call("counter", "target", "get") == 5
    with pytest.raises(RuntimeError):
        h.call("sender", "s", "forward_then_fail", "never")
    assert h.read("counter", "never") is None


# -- the clock and alarms ----------------------------------------------------------------


def test_alarm_times_follow_the_virtual_clock(h: Harness) -> None:
    """Given the virtual clock, then alarm times from handlers and from the client helpers
    are virtual times, and drain moves the clock to each alarm it fires."""
    h.call("alarmed", "a", "schedule", "year", 365 * 86400.0)
    entities.schedule_alarm("alarmed", "a", "ms", 0.005)
    assert [(a.name, a.fire_at) for a in h.alarms("alarmed", "a")] == [
        ("ms", T0 + dt.timedelta(milliseconds=5)),
        ("year", T0 + dt.timedelta(days=365)),
    ]
    assert h.drain_alarms() == 2
    assert h.now == T0 + dt.timedelta(days=365)
    assert [f[0] for f in h.read("alarmed", "a").state["fired"]] == ["ms", "year"]


def test_drain_within_fires_only_what_is_due_by_then(h: Harness) -> None:
    """Given an alarm in 10 s, then draining 5 s fires nothing, the next 5 s fire it, and the
    clock ends at the end of each window."""
    h.call("alarmed", "w", "schedule", "x", 10.0, {"p": 1})
    assert h.drain_alarms(within=5) == 0
    assert h.now == T0 + dt.timedelta(seconds=5)
    assert h.drain_alarms(within=dt.timedelta(seconds=5)) == 1
    assert h.now == T0 + dt.timedelta(seconds=10)
    assert h.read("alarmed", "w").state["fired"][0][:2] == ["x", {"p": 1}]
    assert h.alarms("alarmed", "w") == []


def test_advance_moves_time_and_fires_nothing(h: Harness) -> None:
    """Given an alarm in 1 s, when the clock advances an hour, then nothing fired until a
    drain, which fires it once (the default misfire policy fires late alarms once)."""
    h.call("alarmed", "v", "schedule", "x", 1.0)
    assert h.advance(3600) == T0 + dt.timedelta(hours=1)
    assert h.read("alarmed", "v").state["fired"] == []
    assert h.drain_alarms() == 1
    assert h.now == T0 + dt.timedelta(hours=1)


def test_fire_alarm_fires_one_alarm_now(h: Harness) -> None:
    """Given an alarm due in a day, when fired by name, then it fires now, once; firing a
    missing alarm raises LookupError."""
    h.call("alarmed", "n", "schedule", "later", 86400.0, "p")
    h.fire_alarm("alarmed", "n", "later")
    assert h.now == T0
    assert [f[:2] for f in h.read("alarmed", "n").state["fired"]] == [["later", "p"]]
    with pytest.raises(LookupError, match="no scheduled alarm 'later'"):
        h.fire_alarm("alarmed", "n", "later")


def test_cancelled_replaced_and_failed_handler_alarms(h: Harness) -> None:
    """Given alarms cancelled, replaced, and scheduled by a handler that raised, then only
    the replacement fires, at its own time."""
    h.call("alarmed", "c", "schedule", "gone", 1.0)
    h.call("alarmed", "c", "cancel", "gone")
    h.call("alarmed", "c", "schedule", "moved", 1.0, "old")
    entities.schedule_alarm("alarmed", "c", "moved", 7.0, "new")
    with pytest.raises(RuntimeError):
        h.call("alarmed", "c", "schedule_then_fail", "doomed", 1.0)
    assert names(h, "alarmed", "c") == ["moved"]
    assert h.drain_alarms() == 1
    assert h.now == T0 + dt.timedelta(seconds=7)
    assert [f[:2] for f in h.read("alarmed", "c").state["fired"]] == [["moved", "new"]]


def test_chains_after_load_and_sends_from_alarms(h: Harness) -> None:
    """Given a relay (a schedules b), an after_load alarm and an alarm that sends a message,
    then draining fires all of them and delivers the message."""
    h.call("relay", "r", "start")
    h.call("riser", "z", "hello")
    h.call("messenger", "m", "arm", "target", 2.0)
    assert h.drain_alarms() == 4
    assert h.read("relay", "r").state["seen"] == ["a", "b"]
    assert h.read("riser", "z").state["woke"] == 1
    assert h.call("counter", "target", "get") == 1


def test_drain_stops_a_chain_longer_than_max_chain(h: Harness) -> None:
    """Given a ticker that reschedules itself forever, then drain raises AlarmChainTooLong
    after max_chain ticks; a bounded ticker drains completely."""
    h.call("ticker", "forever", "start", 60.0)
    with pytest.raises(AlarmChainTooLong, match="max_chain=20"):
        h.drain_alarms(max_chain=20)
    assert h.read("ticker", "forever").state["ticks"] == 20
    entities.cancel_all_alarms("ticker", "forever")
    h.call("ticker", "bounded", "start", 1.0, 15)
    assert h.drain_alarms(max_chain=15) == 15


def test_max_chain_bounds_chains_not_independent_alarms(h: Harness) -> None:
    """Given 40 entities with one alarm each, then a drain with max_chain=1 fires them all."""
    for i in range(40):
        entities.schedule_alarm("alarmed", f"e{i}", "x", i / 10)
    assert h.drain_alarms(max_chain=1) == 40


def test_a_failing_alarm_is_retried_with_backoff_then_failed_and_retryable(h: Harness) -> None:
    """Given an alarm handler that raises, then drain raises its error after recording the
    attempt; without raising, it is retried after 1, 2, 4 and 8 s, then kept as failed;
    once fixed, retry_alarm makes it fire."""
    entities.schedule_alarm("flaky", "f", "boom", 0)
    with pytest.raises(RuntimeError, match="not allowed"):
        h.drain_alarms()
    (alarm,) = h.alarms("flaky", "f")
    assert (alarm.attempts, alarm.fire_at) == (1, T0 + dt.timedelta(seconds=1))
    assert h.drain_alarms(raise_errors=False) == 4
    assert h.now == T0 + dt.timedelta(seconds=1 + 2 + 4 + 8)
    (failed,) = entities.failed_alarms("flaky")
    assert (failed.status, failed.attempts) == ("failed", 5)
    assert failed.last_error == "RuntimeError: not allowed to fire boom"
    assert entities.list_alarms("flaky", "f") == []
    h.call("flaky", "f", "allow")
    assert entities.retry_alarm("flaky", "f", "boom")
    assert h.drain_alarms() == 1
    assert h.read("flaky", "f").state["fired"] == 1


def test_missing_handle_alarm_and_unknown_types_remove_the_alarm(h: Harness) -> None:
    """Given alarms of a type without handle_alarm and of an unknown type, then firing
    removes both; the unknown type raises UnknownEntityType."""
    entities.schedule_alarm("counter", "c", "x", 0)
    h.fire_alarm("counter", "c", "x")
    assert h.alarms("counter", "c") == []
    entities.schedule_alarm("no_such_type", "u", "x", 0)
    with pytest.raises(entities.UnknownEntityType):
        h.fire_alarm("no_such_type", "u", "x")
    assert h.alarms("no_such_type", "u") == []


def test_the_skip_misfire_policy_applies_in_the_harness() -> None:
    """Given the skip policy with a 60 s tolerance, when the clock jumps an hour past an
    alarm, then drain skips it and keeps it as skipped; a timely alarm fires."""
    with Harness(start=T0, alarm_misfire="skip", alarm_misfire_tolerance_s=60.0) as h:
        h.call("alarmed", "s", "schedule", "late", 1.0)
        h.advance(3600)
        h.call("alarmed", "s", "schedule", "timely", 30.0)
        assert h.drain_alarms() == 1
        (skipped,) = entities.failed_alarms()
        assert (skipped.name, skipped.status) == ("late", "skipped")
        assert [f[0] for f in h.read("alarmed", "s").state["fired"]] == ["timely"]


# -- the harness and the process ---------------------------------------------------------


def test_closing_restores_the_process_clock_and_store() -> None:
    """Given a harness opened and closed, then the system clock and the old store are back."""
    sentinel = object()
    previous = set_store(sentinel)  # type: ignore[arg-type]
    try:
        with Harness(start=T0):
            assert clock.now() == T0
        assert abs(clock.now() - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
        assert get_store() is sentinel
    finally:
        set_store(previous)


def test_the_virtual_clock_only_moves_forward() -> None:
    """Given a virtual clock, then advance and move_to never go backwards."""
    c = VirtualClock(T0)
    assert c.advance(dt.timedelta(minutes=1)) == T0 + dt.timedelta(minutes=1)
    assert c.move_to(T0) == T0 + dt.timedelta(minutes=1)
    with pytest.raises(ValueError):
        c.advance(-1)
    with pytest.raises(ValueError):
        VirtualClock(dt.datetime(2030, 1, 1))


def test_celery_message_is_what_partition_owners_parse() -> None:
    """Given a built message, then the partition owners' parser reads back every field."""
    raw = celery_message(
        "t",
        "i",
        {"op": OP_ALARM, "args": ["n", "s", 0]},
        "tid",
        durability="strict",
        ignore_result=True,
    )
    env = parse_envelope(raw, 1 << 20)
    assert (env.error, env.bad) == (None, None)
    assert (env.task_id, env.entity_type, env.entity_id, env.op, env.args) == (
        "tid",
        "t",
        "i",
        OP_ALARM,
        ["n", "s", 0],
    )
    assert (env.durability, env.silent) == ("strict", True)
