"""The Processor's commit rules against a real store: optimistic duplicate checks and
what a failed commit does to changes still waiting for their flush."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from entities import Entity, field, handler, read
from entities.errors import FenceError
from entities.routing import partition_for
from entities.settings import get_settings
from entities.store import CommitBatch, Processed, Write
from entities.transport import celery_message
from workers.processor import Processor

PARTITION = 2


def ids_in_partition(entity_type: str, count: int) -> list[str]:
    """``count`` entity ids of ``entity_type`` that live in PARTITION."""
    partitions = get_settings().partitions
    found = (
        f"e{i}"
        for i in itertools.count()
        if partition_for(entity_type, f"e{i}", partitions) == PARTITION
    )
    return list(itertools.islice(found, count))


def replies(result: Any) -> list[Any]:
    return [o.value if o.ok else repr(o.error) for o in result.outcomes]


def test_a_message_already_recorded_is_answered_from_its_record_not_applied(store) -> None:  # type: ignore[no-untyped-def]
    """Given a strict message whose id is already recorded (a resend), when it comes in a
    batch with a new message, then the batch's first commit fails as a duplicate, the
    batch is applied again reading the records, the resend gets the recorded reply and
    only the new message changes the state."""
    [cid] = ids_in_partition("counter", 1)
    epoch = store.claim_partition(PARTITION, "test")
    store.commit(
        CommitBatch(
            PARTITION,
            epoch,
            writes=[Write("counter", cid, 0, 1, {"count": 5})],
            processed=[Processed("sent-before", "counter", cid, PARTITION, True, 5)],
        )
    )
    processor = Processor(PARTITION, store, get_settings())
    resend = celery_message("counter", cid, {"op": "increment", "args": [5]}, task_id="sent-before")
    fresh = celery_message("counter", cid, {"op": "increment", "args": [1]})
    result = processor.process([resend, fresh], epoch)
    assert replies(result) == [5, 6]
    assert store.load("counter", cid).state == {"count": 6}
    assert processor.conflicts == 0  # a duplicate is not a version conflict


def test_a_conflict_while_relaxed_changes_wait_drops_them_and_says_so(store) -> None:  # type: ignore[no-untyped-def]
    """Given a relaxed entity's change waiting for its flush, when a strict batch meets a
    version conflict (which drops the partition's memory, that change with it), then
    process raises instead of retrying the strict batch alone, so the runner fetches
    every unacknowledged message again; applied again, both changes are committed."""
    [cid] = ids_in_partition("counter", 1)
    [sid] = ids_in_partition("slow_flush_counter", 1)
    epoch = store.claim_partition(PARTITION, "test")
    processor = Processor(PARTITION, store, get_settings())
    first = celery_message("counter", cid, {"op": "increment"})
    assert replies(processor.process([first], epoch)) == [1]
    relaxed = celery_message("slow_flush_counter", sid, {"op": "increment"})
    assert replies(processor.process([relaxed], epoch)) == [1]
    assert processor.dirty  # waiting for its flush (an hour away)

    # Another writer changes the counter behind the processor's back.
    store.commit(CommitBatch(PARTITION, epoch, writes=[Write("counter", cid, 1, 1, {"count": 10})]))
    second = celery_message("counter", cid, {"op": "increment"})
    with pytest.raises(FenceError):
        processor.process([second], epoch)
    assert not processor.dirty
    assert store.load("slow_flush_counter", sid) is None

    # What the runner does next: every unacknowledged message, from the oldest.
    assert replies(processor.process([relaxed, second], epoch)) == [1, 11]
    assert store.load("counter", cid).state == {"count": 11}
    processor.flush(epoch)
    assert store.load("slow_flush_counter", sid).state == {"count": 1}


class Basket(Entity, name="test_exact_basket"):
    """State and replies whose key order and floats must survive the store."""

    items: dict[str, int] = field(default_factory=dict)
    ratio: float = 1.0

    @handler
    def add(self, name: str, n: int) -> dict[str, Any]:
        self.items[name] = self.items.get(name, 0) + n
        return {"items": self.items, "ratio": self.ratio}


def test_state_and_recorded_replies_keep_key_order_and_floats(store) -> None:  # type: ignore[no-untyped-def]
    """Given a basket that gets an apple and then a pear, then the stored state lists the
    apple first (Postgres jsonb listed the pear first), and a resend of the second message
    gets its recorded reply in the same order, with 1.0 still a float."""
    [bid] = ids_in_partition("test_exact_basket", 1)
    epoch = store.claim_partition(PARTITION, "test")
    processor = Processor(PARTITION, store, get_settings())
    apple = celery_message("test_exact_basket", bid, {"op": "add", "args": ["apple", 2]})
    pear = celery_message("test_exact_basket", bid, {"op": "add", "args": ["pear", 1]}, "pear-1")
    expected = {"items": {"apple": 2, "pear": 1}, "ratio": 1.0}
    assert json.dumps(replies(processor.process([apple, pear], epoch))[1]) == json.dumps(expected)

    assert json.dumps(read("test_exact_basket", bid).state) == json.dumps(expected)
    fresh = Processor(PARTITION, store, get_settings())  # nothing in memory: from the store
    resend = celery_message("test_exact_basket", bid, {"op": "add", "args": ["pear", 1]}, "pear-1")
    [reply] = replies(fresh.process([resend], epoch))
    assert json.dumps(reply) == json.dumps(expected)
