"""A runner's Redis lane: one round trip per exchange, the settle read one exchange late,
and still every message fetched once, in order, and acknowledged only by its owner."""

from __future__ import annotations

import os

from entities.routing import inflight_key, lease_key, queue_name
from workers.broker import PartitionQueues, Replies

PARTITION = 5


def setup(redis_client, count: int) -> tuple[PartitionQueues, str]:  # type: ignore[no-untyped-def]
    queues = PartitionQueues(redis_client)
    token = f"test-lane-{os.getpid()}"
    assert queues.acquire(PARTITION, token, 60_000)
    for i in range(count):
        redis_client.lpush(queue_name(PARTITION), f"m{i}".encode())
    return queues, token


def test_exchanges_fetch_each_message_once_in_order_and_settle_late(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given five queued messages, when a lane fetches two at a time and settles each
    batch (replies and acknowledgement) with the next fetch, then the batches come in
    order with no message twice, every reply is stored, and once the last batch is
    settled nothing is left queued or in flight."""
    queues, token = setup(redis_client, 5)
    lane = queues.lane(PARTITION, token)
    batches, pending = [], 0
    replies = Replies((), ())
    while True:
        fetched = lane.exchange(2, pending, replies=replies, ack=pending)
        assert fetched is not None
        pending = len(fetched.raws)
        if not fetched.raws:
            break
        batches.append([r.decode() for r in fetched.raws])
        replies = Replies([f"reply-{r}" for r in batches[-1]], [b"done"] * pending, 60)
    assert lane.settle(replies, pending)
    lane.close()
    assert batches == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert [redis_client.get(f"reply-m{i}") for i in range(5)] == [b"done"] * 5
    assert queues.depth(PARTITION) == (0, 0)


def test_a_lease_lost_before_a_late_settle_is_noticed_and_nothing_is_acknowledged(
    redis_client,  # type: ignore[no-untyped-def]
) -> None:
    """Given a batch fetched, when the lease passes to another worker before the lane
    settles it late, then the next exchange returns None and the batch stays in flight
    for the new owner."""
    queues, token = setup(redis_client, 3)
    lane = queues.lane(PARTITION, token)
    first = lane.exchange(2, 0)
    assert first is not None and len(first.raws) == 2
    redis_client.set(lease_key(PARTITION), "someone-else")
    assert lane.exchange(2, 2, ack=2) is None  # its fetch sees the lease gone
    lane.close()
    assert redis_client.llen(inflight_key(PARTITION)) == 2
    assert redis_client.llen(queue_name(PARTITION)) == 1


def test_each_fetch_renews_the_lease(redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given a lane made with a lease TTL, when it fetches, then the lease's time to live
    is back to the TTL, so a runner that keeps working keeps its partition even when
    its worker's heartbeat thread is late; a lane without a TTL leaves it alone."""
    queues, token = setup(redis_client, 1)
    redis_client.pexpire(lease_key(PARTITION), 500)
    plain = queues.lane(PARTITION, token)
    assert plain.exchange(1, 0) is not None
    plain.close()
    assert redis_client.pttl(lease_key(PARTITION)) <= 500
    renewing = queues.lane(PARTITION, token, lease_ttl_ms=30_000)
    assert renewing.exchange(1, 1, ack=1) is not None
    renewing.close()
    assert redis_client.pttl(lease_key(PARTITION)) > 25_000
