"""A runner never asks Redis for a blocking wait too short to be one."""

from __future__ import annotations

import os
from typing import Any

from tests.test_poison import BuggyProcessor
from workers.broker import PartitionQueues
from workers.replies import ReplyWriter
from workers.runner import MIN_WAIT_S, PartitionRunner

PARTITION = 5


def test_a_wait_shorter_than_the_minimum_is_a_plain_fetch(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given an idle partition whose next look for due delayed messages is a millisecond
    away, when its runner exchanges, then it fetches without a blocking wait (a 1 ms BLMOVE
    blocked until the socket timed out on redis-server 6.2), and with the look far away it
    waits, for at most WAIT_S."""
    from workers import app

    queues = PartitionQueues(redis_client)
    token = f"test-wait-{os.getpid()}"
    assert queues.acquire(PARTITION, token, 60_000)
    epoch = store.claim_partition(PARTITION, "test-wait")
    runner = PartitionRunner(
        PARTITION,
        token,
        epoch,
        queues,
        BuggyProcessor(store),  # type: ignore[arg-type]
        ReplyWriter(app.backend),  # type: ignore[arg-type]
        lambda outbox: None,
        200,
        lambda runner, reason: None,
    )
    waits: list[float] = []
    real = runner.lane.exchange

    def spy(*args: Any, **kwargs: Any) -> Any:
        waits.append(kwargs["wait_s"])
        return real(*args, **kwargs)

    runner.lane.exchange = spy  # type: ignore[method-assign]
    try:
        runner._drained = True
        runner._next_delayed = runner_now() + 0.001
        assert runner._exchange() is not None
        runner._drained = True
        runner._next_delayed = runner_now() + 100.0
        assert runner._exchange() is not None
    finally:
        runner.lane.close()
    assert waits[0] == 0.0
    assert MIN_WAIT_S <= waits[1] <= 0.5


def runner_now() -> float:
    from entities import clock

    return clock.now().timestamp()
