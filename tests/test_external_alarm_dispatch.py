"""An alarm scheduled once from outside its entity is one scheduling, fired once, however
its dispatch interleaves with the queued copy of the change (see entities.alarm_ops).

Real Processor, Postgres store and Redis queues: the client writes the store and queues
the copy, a dispatch claims the direct write, and the partition's owner applies its
queue in the orders a worker may.
"""

from __future__ import annotations

from typing import Any

import pytest

import entities
from entities.routing import queue_name
from entities.settings import get_settings
from tests.test_pending_alarms import PARTITION, an_id, setup
from workers.alarms import dispatch, publisher


def dispatch_now(store: Any, redis_client: Any) -> int:
    """One dispatch, as beat's task runs it: claims due alarms and pushes their firings."""
    settings = get_settings()
    return dispatch(store, settings, publisher(redis_client, settings.partitions))


def queued(redis_client: Any) -> list[bytes]:
    """Takes the partition queue's messages, oldest first."""
    raws = []
    while (raw := redis_client.rpop(queue_name(PARTITION))) is not None:
        raws.append(raw)
    return raws


@pytest.mark.parametrize("batches", ["one-batch", "copy-then-firing"])
def test_a_dispatch_before_the_queued_copy_is_applied_fires_the_alarm_once(
    store,  # type: ignore[no-untyped-def]
    redis_client,
    batches: str,
) -> None:
    """Given a due alarm scheduled with entities.schedule_alarm, when a dispatch claims it
    before the change's queued copy is applied (in the same batch as the firing, or in
    the batch before it), then the alarm fires once, no row is left, and no later
    dispatch sends it again."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    entities.schedule_alarm("alarmed", eid, "ring", 0)
    assert dispatch_now(store, redis_client) == 1
    copy, fire = queued(redis_client)
    if batches == "one-batch":
        processor.process([copy, fire], epoch)
    else:
        processor.process([copy], epoch)
        processor.process([fire], epoch)
    assert len(store.load("alarmed", eid).state["fired"]) == 1
    assert store.list_alarms("alarmed", eid) == []
    assert dispatch_now(store, redis_client) == 0


def test_a_dispatch_after_the_queued_copy_is_applied_fires_the_alarm_once(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given a due alarm scheduled with entities.schedule_alarm whose queued copy is
    applied first, when a dispatch claims it, then it fires once and is not sent again."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    entities.schedule_alarm("alarmed", eid, "ring", 0)
    processor.process(queued(redis_client), epoch)
    assert dispatch_now(store, redis_client) == 1
    processor.process(queued(redis_client), epoch)
    assert len(store.load("alarmed", eid).state["fired"]) == 1
    assert store.list_alarms("alarmed", eid) == []
    assert dispatch_now(store, redis_client) == 0


def test_the_queued_copy_keeps_the_scheduling_the_client_wrote(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given an alarm scheduled with entities.schedule_alarm and claimed by a dispatch, when
    its queued copy is applied, then the row keeps its scheduling id and dispatch claim
    (a second dispatch sends nothing)."""
    eid = an_id("alarmed")
    processor, epoch = setup(store)
    entities.schedule_alarm("alarmed", eid, "ring", 0)
    written = store.get_alarm("alarmed", eid, "ring")
    assert dispatch_now(store, redis_client) == 1
    copy, _fire = queued(redis_client)
    processor.process([copy], epoch)
    assert store.get_alarm("alarmed", eid, "ring").scheduling_id == written.scheduling_id
    assert dispatch_now(store, redis_client) == 0
