"""Alarm dispatch is idempotent per scheduling and attempt: a redispatch of an alarm whose
message is still queued (a paused entity, a lagging partition) pushes no second copy."""

from __future__ import annotations

import dataclasses

from entities import clock
from entities.routing import partition_for, queue_name
from entities.settings import get_settings
from entities.store import AlarmChange
from workers.alarms import dispatch, publisher


def test_a_due_alarm_claimed_again_and_again_stays_one_message_in_its_queue(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given a due alarm whose message nobody consumes, when dispatch claims it again
    after every redispatch window, then its queue holds one message for it."""
    store.set_alarm(AlarmChange("alarmed", "a1", "x", clock.now(), None))
    settings = dataclasses.replace(get_settings(), alarm_redispatch_s=0.0)
    publish = publisher(redis_client, settings.partitions)
    sent = [dispatch(store, settings, publish) for _ in range(5)]
    assert sent == [1, 1, 1, 1, 1]  # claimed each time: the window is 0 s
    queue = queue_name(partition_for("alarmed", "a1", settings.partitions))
    assert redis_client.llen(queue) == 1


def test_a_new_attempt_or_scheduling_is_pushed_even_while_an_old_one_waits(
    store,  # type: ignore[no-untyped-def]
    redis_client,
) -> None:
    """Given an alarm pushed once, when it is replaced by a new scheduling, then the new
    scheduling's message is pushed beside the old one."""
    settings = dataclasses.replace(get_settings(), alarm_redispatch_s=0.0)
    publish = publisher(redis_client, settings.partitions)
    store.set_alarm(AlarmChange("alarmed", "a1", "x", clock.now(), None))
    dispatch(store, settings, publish)
    store.set_alarm(AlarmChange("alarmed", "a1", "x", clock.now(), None))
    dispatch(store, settings, publish)
    queue = queue_name(partition_for("alarmed", "a1", settings.partitions))
    assert redis_client.llen(queue) == 2
