"""A message that makes applying fail with an unexpected error never stalls its partition."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from entities.errors import BadMessage, StoreError
from entities.routing import partition_for, queue_name
from entities.settings import get_settings
from entities.transport import celery_message
from tests.lifecycle import eventually
from workers.broker import PartitionQueues
from workers.processor import BatchResult, Processor
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

    def kept_replies(self) -> frozenset[str]:
        return frozenset()

    def acknowledged(self, ids: Any = None) -> None:
        pass


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


def _id_on(entity_type: str, prefix: str, partition: int = PARTITION) -> str:
    """An entity id of ``entity_type`` whose home is ``partition``."""
    count = get_settings().partitions
    return next(
        f"{prefix}{i}"
        for i in range(100_000)
        if partition_for(entity_type, f"{prefix}{i}", count) == partition
    )


def _task_id(raw: bytes) -> str:
    import json

    return str(json.loads(raw)["headers"]["id"])


def _start_runner(store: Any, redis_client: Any, processor: Any) -> tuple[Any, Any, Any]:
    from workers import app

    queues = PartitionQueues(redis_client)
    token = f"test-poison-{os.getpid()}-{time.monotonic()}"
    assert queues.acquire(PARTITION, token, 60_000)
    epoch = store.claim_partition(PARTITION, "test-poison")
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

    def keep_lease() -> None:  # as a worker's heartbeat does, through the runner's backoffs
        while not exited.wait(0.3):
            queues.renew({PARTITION: token}, 60_000)

    threading.Thread(target=keep_lease, daemon=True).start()
    return runner, queues, exited


class FailingOn(Processor):
    """The real processor, except that a batch holding ``poison`` raises ``error``."""

    poison: bytes = b""
    error: BaseException = RuntimeError("a bug in the runtime")
    failures = 0

    def process(self, raws: list[bytes], epoch: int | None, held: Any = frozenset()) -> Any:
        if self.poison in raws:
            self.failures += 1
            raise self.error
        return super().process(raws, epoch, held)


def test_a_poison_message_behind_an_unflushed_relaxed_message_is_isolated(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a relaxed entity's message applied but not flushed (its acknowledgement held),
    when a poison message follows it, then the poison one is dead-lettered with an error
    reply, the relaxed change is committed once, and later messages flow."""
    from workers import app

    relaxed_id = _id_on("slow_flush_counter", "r")
    relaxed = celery_message("slow_flush_counter", relaxed_id, {"op": "increment"})
    poison = celery_message("counter", _id_on("counter", "p"), {"op": "increment"})
    good = celery_message("counter", _id_on("counter", "g"), {"op": "increment"})
    processor = FailingOn(PARTITION, store, get_settings())
    processor.poison = poison
    redis_client.lpush(queue_name(PARTITION), relaxed)
    runner, queues, exited = _start_runner(store, redis_client, processor)
    try:
        assert app.AsyncResult(_task_id(relaxed)).get(timeout=30) == 1
        assert processor.dirty  # applied, not flushed: its acknowledgement waits
        redis_client.lpush(queue_name(PARTITION), poison, good)
        assert app.AsyncResult(_task_id(good)).get(timeout=60) == 1
        with pytest.raises(BadMessage, match="a bug in the runtime"):
            app.AsyncResult(_task_id(poison)).get(timeout=10)
        (letter,) = store.dead_letters()
        assert _task_id(poison) in letter.raw
        snapshot = store.load("slow_flush_counter", relaxed_id)
        assert snapshot is not None and snapshot.state["count"] == 1
        eventually(lambda: queues.depth(PARTITION) == (0, 0), timeout_s=10)
    finally:
        runner.stop()
        exited.wait(10)


def test_a_store_outage_is_retried_and_blames_no_message(  # type: ignore[no-untyped-def]
    store, redis_client
) -> None:
    """Given a store that fails for its own reasons (a StoreError, not refused data) many
    times in a row, when it recovers, then every message is applied and none was
    dead-lettered."""
    from workers import app

    raws = [
        celery_message("counter", _id_on("counter", "o"), {"op": "increment"}) for _ in range(3)
    ]
    processor = FailingOn(PARTITION, store, get_settings())
    processor.poison = raws[1]
    processor.error = StoreError("state store error: connection refused")
    for raw in raws:
        redis_client.lpush(queue_name(PARTITION), raw)
    runner, _, exited = _start_runner(store, redis_client, processor)
    try:  # more failures than isolating and dead-lettering would take (2 * POISON_STRIKES)
        eventually(lambda: processor.failures >= 7, timeout_s=60)
        assert store.dead_letters() == []
        processor.poison = b"-"  # the store is back
        assert [app.AsyncResult(_task_id(r)).get(timeout=30) for r in raws] == [1, 2, 3]
        assert store.dead_letters() == []
    finally:
        runner.stop()
        exited.wait(10)


def test_a_message_whose_value_the_store_refuses_is_dead_lettered(  # type: ignore[no-untyped-def]
    store, redis_client, monkeypatch
) -> None:
    """Given an alarm message with a name Postgres refuses that slipped past the parser (its
    check switched off here), when the runner applies it, then the store's refusal counts
    against that message: it is dead-lettered with an error reply and the next flows."""
    from entities import messages
    from workers import app

    monkeypatch.setattr(messages, "validate_runtime_args", lambda *a: None, raising=False)
    entity_id = _id_on("counter", "d")
    bad = celery_message("counter", entity_id, {"op": "__alarm__", "args": ["a\x00b", "s", 0]})
    good = celery_message("counter", entity_id, {"op": "increment"})
    redis_client.lpush(queue_name(PARTITION), bad, good)
    runner, queues, exited = _start_runner(
        store, redis_client, Processor(PARTITION, store, get_settings())
    )
    try:
        assert app.AsyncResult(_task_id(good)).get(timeout=60) == 1
        with pytest.raises(BadMessage, match="cannot take this data"):
            app.AsyncResult(_task_id(bad)).get(timeout=10)
        (letter,) = store.dead_letters()
        assert _task_id(bad) in letter.raw
        eventually(lambda: queues.depth(PARTITION) == (0, 0), timeout_s=10)
    finally:
        runner.stop()
        exited.wait(10)


@pytest.mark.no_services
def test_strikes_are_forgotten_only_past_every_suspect() -> None:
    """Given failures that touched the 2 oldest unacknowledged messages, when one message is
    acknowledged in between, then the strikes still add up to isolation; isolating, a lone
    message failing POISON_STRIKES times is to be dead-lettered, and once every suspect is
    acknowledged the runner batches again."""
    from workers.poison import POISON_STRIKES, Isolation

    iso = Isolation(PARTITION, batch_size=200)
    assert not iso.strike(suspects=2, lone=False)
    iso.passed(1)  # a relaxed message before the poison went through: not past it yet
    for _ in range(POISON_STRIKES - 1):
        assert not iso.strike(suspects=1, lone=False)
    assert iso.active and iso.fetch_size == 1
    assert [iso.strike(suspects=1, lone=True) for _ in range(POISON_STRIKES)][-1]
    iso.passed(1)  # the dead letter's acknowledgement
    assert not iso.active and iso.fetch_size == 200 and iso.strikes == 0
    assert not iso.strike(suspects=0, lone=True)  # nothing unacknowledged: nobody to blame
    assert iso.strikes == 0
