"""A message that makes applying fail with an unexpected error never stalls its partition."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from entities.routing import queue_name
from entities.settings import get_settings
from entities.transport import celery_message
from tests.lifecycle import eventually
from workers.broker import PartitionQueues
from workers.processor import BatchResult
from workers.replies import ReplyWriter
from workers.runner import PartitionRunner

PARTITION = 3


class BuggyProcessor:
    """Stands in for the Processor: raises an unexpected error on any batch holding a poison."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.settings = get_settings()
        self.dirty = False
        self.applied: list[bytes] = []

    def process(self, raws: list[bytes], epoch: int | None, held: Any = frozenset()) -> Any:
        if any(b"poison" in r for r in raws):
            raise RuntimeError("a bug in the runtime")
        self.applied.extend(raws)
        return BatchResult([], [])

    def reset(self) -> None:
        pass

    def flush_in(self) -> None:
        return None

    def sweep(self) -> bool:
        return False

    def flush(self, epoch: int | None) -> list[Any]:
        return []


def test_a_poison_message_is_isolated_dead_lettered_and_the_partition_flows_on(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a partition whose second message always makes applying raise, when its runner
    works, then the messages before and after it are applied, the poison one is
    dead-lettered with the error, and nothing is left in flight."""
    from workers import app

    queues = PartitionQueues(redis_client)
    token = f"test-poison-{os.getpid()}"
    assert queues.acquire(PARTITION, token, 60_000)
    epoch = store.claim_partition(PARTITION, "test-poison")
    good1 = celery_message("counter", "a", {"op": "increment"})
    poison = celery_message("counter", "poison", {"op": "increment"})
    good2 = celery_message("counter", "b", {"op": "increment"})
    for raw in (good1, poison, good2):
        redis_client.lpush(queue_name(PARTITION), raw)
    processor = BuggyProcessor(store)
    exited = threading.Event()
    runner = PartitionRunner(
        PARTITION,
        token,
        epoch,
        queues,
        processor,
        ReplyWriter(app.backend),  # type: ignore[arg-type]
        lambda outbox: None,
        200,
        lambda runner, reason: exited.set(),
    )
    runner.start()
    try:
        eventually(lambda: good2 in processor.applied, timeout_s=60)
        letters = eventually(lambda: store.dead_letters(), timeout_s=10)
        assert len(letters) == 1
        assert "poison" in letters[0].raw
        assert "a bug in the runtime" in letters[0].reason
        assert processor.applied[0] == good1
        assert queues.depth(PARTITION) == (0, 0)
    finally:
        runner.stop()
        exited.wait(10)
    time.sleep(0.1)
    assert not runner.is_alive()
