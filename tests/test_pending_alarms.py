"""What a batch stages is what later messages see: alarm firings and deletes against the
changes not yet committed (this batch's, and a relaxed entity's unflushed ones), on the
real Processor and a real Postgres store."""

from __future__ import annotations

import itertools
from typing import Any

from entities.messages import OP_DELETE
from entities.routing import partition_for
from entities.settings import get_settings
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
