"""What a batch stages is what later messages see: alarm firings and deletes against the
changes not yet committed (this batch's, and a relaxed entity's unflushed ones), on the
real Processor and a real Postgres store."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

import entities
from entities import clock
from entities.errors import BadMessage
from entities.messages import OP_CLEAR_ALARMS, OP_DELETE, OP_SET_ALARM
from entities.routing import partition_for, queue_name
from entities.settings import get_settings
from entities.store import AlarmChange
from entities.transport import celery_message
from workers.alarms import alarm_call
from workers.processor import Processor

PARTITION = 5


def an_id(entity_type: str) -> str:
    """An id of ``entity_type`` that lives in PARTITION."""
    partitions = get_settings().partitions
    return next(
        f"p{i}"
        for i in itertools.count()
        if partition_for(entity_type, f"p{i}", partitions) == PARTITION
    )


def call(entity_type: str, entity_id: str, op: str, *args: Any, **options: Any) -> bytes:
    return celery_message(entity_type, entity_id, {"op": op, "args": list(args)}, **options)


def firing(store: Any, entity_type: str, entity_id: str, name: str) -> bytes:
    """The message beat would send to fire the stored alarm ``name`` now."""
    task_id, (etype, eid, msg) = alarm_call(store.get_alarm(entity_type, entity_id, name))
    return celery_message(etype, eid, msg, task_id, ignore_result=True)


def alarm_names(store: Any, entity_type: str, entity_id: str) -> list[str]:
    return sorted(a.name for a in store.list_alarms(entity_type, entity_id))


def setup(store: Any) -> tuple[Processor, int]:
    epoch = store.claim_partition(PARTITION, "test")
    return Processor(PARTITION, store, get_settings()), epoch


def test_an_alarm_cancelled_earlier_in_the_same_batch_does_not_fire(store) -> None:  # type: ignore[no-untyped-def]
    """Given a stored due alarm, when a batch holds its cancel and then its firing, then the
    firing sees the staged cancel and the handler does not run."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    processor.process([call("alarmed", eid, "schedule", "x", 0)], epoch)
    fire = firing(store, "alarmed", eid, "x")
    processor.process([call("alarmed", eid, "cancel", "x"), fire], epoch)
    assert store.load("alarmed", eid).state["fired"] == []
    assert alarm_names(store, "alarmed", eid) == []


def test_an_alarm_replaced_earlier_in_the_same_batch_fires_only_as_its_new_scheduling(
    store,  # type: ignore[no-untyped-def]
) -> None:
    """Given a stored due alarm, when a batch reschedules it and then carries the old
    scheduling's firing, then the old one does not fire and the new one stays scheduled."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    processor.process([call("alarmed", eid, "schedule", "x", 0)], epoch)
    fire = firing(store, "alarmed", eid, "x")
    processor.process([call("alarmed", eid, "schedule", "x", 3600), fire], epoch)
    assert store.load("alarmed", eid).state["fired"] == []
    assert alarm_names(store, "alarmed", eid) == ["x"]


def test_an_alarm_cancelled_by_an_unflushed_relaxed_change_does_not_fire(store) -> None:  # type: ignore[no-untyped-def]
    """Given a relaxed entity whose stored alarm it cancelled in a change not flushed yet,
    when the alarm's firing arrives, then it does not fire, and the cancel commits."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    processor.process([call("lazy_alarmed", eid, "schedule", "x", 0)], epoch)
    processor.flush(epoch)
    fire = firing(store, "lazy_alarmed", eid, "x")
    processor.process([call("lazy_alarmed", eid, "cancel", "x")], epoch)
    assert processor.dirty  # the cancel waits in memory
    processor.process([fire], epoch)
    processor.flush(epoch)
    assert store.load("lazy_alarmed", eid).state["fired"] == []
    assert alarm_names(store, "lazy_alarmed", eid) == []


def test_a_strict_call_commits_deferred_alarm_changes_before_its_own(store) -> None:  # type: ignore[no-untyped-def]
    """Given a relaxed entity's unflushed schedule of an alarm, when a strict call of the
    same entity cancels it, then the commit applies them in the order they were made."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    processor.process([call("lazy_alarmed", eid, "schedule", "x", 3600)], epoch)
    processor.process([call("lazy_alarmed", eid, "cancel", "x", durability="strict")], epoch)
    assert not processor.dirty
    assert alarm_names(store, "lazy_alarmed", eid) == []


def test_a_delete_removes_a_relaxed_entitys_unflushed_alarms(store) -> None:  # type: ignore[no-untyped-def]
    """Given a relaxed entity with a stored alarm and an unflushed one, when it is deleted,
    then neither alarm survives the delete's commit."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    processor.process([call("lazy_alarmed", eid, "schedule", "stored", 3600)], epoch)
    processor.flush(epoch)
    processor.process([call("lazy_alarmed", eid, "schedule", "unflushed", 3600)], epoch)
    processor.process([celery_message("lazy_alarmed", eid, {"op": OP_DELETE})], epoch)
    processor.flush(epoch)
    assert store.load("lazy_alarmed", eid) is None
    assert alarm_names(store, "lazy_alarmed", eid) == []


def test_a_delete_followed_by_a_message_in_one_batch_removes_the_old_alarms_only(
    store,  # type: ignore[no-untyped-def]
) -> None:
    """Given an entity with a stored alarm, when one batch deletes it and then schedules
    another alarm, then the old alarm is gone and the new one survives."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    processor.process([call("alarmed", eid, "schedule", "old", 3600)], epoch)
    delete = celery_message("alarmed", eid, {"op": OP_DELETE})
    processor.process([delete, call("alarmed", eid, "schedule", "new", 3600)], epoch)
    assert alarm_names(store, "alarmed", eid) == ["new"]


def test_a_relaxed_delete_then_a_schedule_in_one_batch_keeps_only_the_new_alarm(
    store,  # type: ignore[no-untyped-def]
) -> None:
    """Given a relaxed entity's unflushed alarm, when one batch deletes the entity and then
    schedules another, then only the one scheduled after the delete is stored."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    processor.process([call("lazy_alarmed", eid, "schedule", "old", 3600)], epoch)
    delete = celery_message("lazy_alarmed", eid, {"op": OP_DELETE})
    processor.process([delete, call("lazy_alarmed", eid, "schedule", "new", 3600)], epoch)
    processor.flush(epoch)
    assert alarm_names(store, "lazy_alarmed", eid) == ["new"]


def test_a_firing_after_a_delete_in_the_same_batch_does_not_bring_the_entity_back(
    store,  # type: ignore[no-untyped-def]
) -> None:
    """Given an entity with a due alarm, when one batch deletes it and then carries the
    alarm's firing, then the alarm does not fire and the entity stays deleted."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    processor.process([call("alarmed", eid, "schedule", "x", 0)], epoch)
    fire = firing(store, "alarmed", eid, "x")
    processor.process([celery_message("alarmed", eid, {"op": OP_DELETE}), fire], epoch)
    assert store.load("alarmed", eid) is None
    assert alarm_names(store, "alarmed", eid) == []


def drain(redis_client: Any, processor: Processor, epoch: int) -> list[Any]:
    """Applies what the partition's queue holds, oldest first, as its owner would."""
    raws = []
    while (raw := redis_client.rpop(queue_name(PARTITION))) is not None:
        raws.append(raw)
    return [o.value for o in processor.process(raws, epoch).outcomes] if raws else []


@pytest.mark.parametrize("flush_first", [False, True], ids=["queued-copy-first", "flush-first"])
def test_an_external_cancel_is_not_undone_by_an_older_unflushed_schedule(
    store,  # type: ignore[no-untyped-def]
    redis_client,
    flush_first: bool,
) -> None:
    """Given a relaxed entity holding an unflushed schedule of alarm x, when a client
    cancels x with entities.cancel_alarm, then whichever comes first (the entity's flush
    or the cancel's copy in its queue) x is not scheduled afterwards."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    processor.process([call("lazy_alarmed", eid, "schedule", "x", 3600)], epoch)
    entities.cancel_alarm("lazy_alarmed", eid, "x")
    if flush_first:
        processor.flush(epoch)
    drain(redis_client, processor, epoch)
    processor.flush(epoch)
    assert alarm_names(store, "lazy_alarmed", eid) == []


def test_an_external_cancel_all_is_not_undone_by_older_unflushed_schedules(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given a relaxed entity holding unflushed alarms, when a client cancels all its
    alarms, then none is scheduled after the entity's flush."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    processor.process([call("lazy_alarmed", eid, "schedule", "x", 3600)], epoch)
    processor.process([call("lazy_alarmed", eid, "schedule", "y", 3600)], epoch)
    entities.cancel_all_alarms("lazy_alarmed", eid)
    drain(redis_client, processor, epoch)
    processor.flush(epoch)
    assert alarm_names(store, "lazy_alarmed", eid) == []


def test_an_external_schedule_is_applied_in_order_and_creates_no_state(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given no entity, when a client schedules an alarm for it, then the alarm is stored at
    once, its queued copy replaces it with the same time and payload, and no state exists."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    when = entities.schedule_alarm("alarmed", eid, "x", 3600, {"n": 1})
    assert alarm_names(store, "alarmed", eid) == ["x"]
    assert drain(redis_client, processor, epoch) == [None]
    alarm = store.get_alarm("alarmed", eid, "x")
    assert (alarm.fire_at, alarm.payload) == (when, {"n": 1})
    assert store.load("alarmed", eid) is None


@pytest.mark.parametrize(
    "msg",
    [
        {"op": OP_SET_ALARM, "args": []},
        {"op": OP_SET_ALARM, "args": ["", None]},
        {"op": OP_SET_ALARM, "args": ["x", "tomorrow"]},
        {"op": OP_SET_ALARM, "args": ["x", "2030-01-01T00:00:00"]},
        {"op": OP_SET_ALARM, "args": ["x", 5]},
        {"op": OP_SET_ALARM, "args": ["x", "2030-01-01T00:00:00+00:00", None, 5]},
        {"op": OP_SET_ALARM, "args": ["x", "2030-01-01T00:00:00+00:00", None, ""]},
        {"op": OP_CLEAR_ALARMS, "args": [1]},
    ],
)
def test_a_malformed_external_alarm_change_gets_bad_message_and_changes_nothing(
    store,  # type: ignore[no-untyped-def]
    msg: dict[str, Any],
) -> None:
    """Given a runtime alarm message with wrong arguments, then its reply is BadMessage
    and nothing is stored."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    [outcome] = processor.process([celery_message("alarmed", eid, msg)], epoch).outcomes
    assert isinstance(outcome.error, BadMessage)
    assert alarm_names(store, "alarmed", eid) == []


@pytest.mark.no_services
def test_in_the_harness_an_external_cancel_outlasts_an_older_unflushed_schedule() -> None:
    """Given the test kit and a relaxed entity's unflushed alarm, when a client cancels it
    and the entity flushes, then the alarm stays cancelled."""
    from workers.testing import Harness

    with Harness() as h:
        h.call("lazy_alarmed", "e", "schedule", "x", 3600)
        entities.cancel_alarm("lazy_alarmed", "e", "x")
        h.flush()
        assert h.alarms("lazy_alarmed", "e") == []


def test_an_external_retry_is_not_undone_by_an_older_unflushed_cancel(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given a relaxed entity holding an unflushed cancel of its skipped alarm x, when a
    client retries x, then x is scheduled again after the entity's flush."""
    eid = an_id("lazy_alarmed")
    processor, epoch = setup(store)
    now = clock.now()
    store.set_alarm(AlarmChange("lazy_alarmed", eid, "x", now - dt.timedelta(hours=1), None))
    [skipped] = store.claim_due_alarms(now, 10, 30.0, skip_before=now)
    assert skipped.status == "skipped"
    processor.process([call("lazy_alarmed", eid, "cancel", "x")], epoch)
    assert entities.retry_alarm("lazy_alarmed", eid, "x")
    drain(redis_client, processor, epoch)
    processor.flush(epoch)
    [again] = store.list_alarms("lazy_alarmed", eid)
    assert (again.name, again.status, again.attempts) == ("x", "scheduled", 0)
