"""Per-entity order with real workers: replies are exactly 1..N per entity, in send order.

The bulk tests send everything first and start the workers afterwards, so the
workers drain full queues in batches (and, with three workers, hand partitions
over while doing it). The last test keeps sending while workers join.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from entities import read
from tests.delivery import collect, increments, partition_of, queues_drained, send
from tests.lifecycle import eventually


def replies_per_entity(sent: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for (eid, _), reply in zip(sent, collect([r for _, r in sent]), strict=True):
        grouped.setdefault(eid, []).append(reply)
    return grouped


@pytest.mark.parametrize("n_workers", [1, 3])
def test_one_entity_gets_a_thousand_messages_in_order(workers, n_workers: int) -> None:  # type: ignore[no-untyped-def]
    """Given 1,000 increments queued for one counter, when workers drain them, then the
    replies are exactly 1..1000 and the committed count is 1000."""
    sent = increments(["hot"], 1000)
    workers.start(n_workers)
    assert replies_per_entity(sent) == {"hot": list(range(1, 1001))}
    snapshot = read("counter", "hot")
    assert snapshot is not None
    assert snapshot.state == {"count": 1000}


@pytest.mark.parametrize("n_workers", [1, 3])
def test_a_hundred_entities_each_get_their_messages_in_order(  # type: ignore[no-untyped-def]
    workers, redis_client, n_workers: int
) -> None:
    """Given 5,000 increments interleaved over 100 counters, when workers drain them, then
    each counter replies exactly 1..50, commits 50, and no queue keeps a message."""
    ids = [f"c{i:03d}" for i in range(100)]
    assert len({partition_of("counter", eid) for eid in ids}) == 16  # every partition is used
    sent = increments(ids, 50)
    workers.start(n_workers)
    assert replies_per_entity(sent) == {eid: list(range(1, 51)) for eid in ids}
    assert {eid: read("counter", eid).state["count"] for eid in ids} == dict.fromkeys(ids, 50)
    eventually(lambda: queues_drained(redis_client))


def test_one_worker_at_a_time_applies_an_entity_while_partitions_move(  # type: ignore[no-untyped-def]
    workers, store
) -> None:
    """Given one worker serving a stream, when two more join and take partitions over
    mid-stream, then each entity's log holds every message once, in send order, and no
    two applications of one entity overlap in time."""
    workers.start(1)
    ids = [f"r{i}" for i in range(6)]
    sent = [(eid, send("recorder", eid, "record", seq, 0.005)) for seq in range(40) for eid in ids]
    workers.start(2, wait=False)

    def owners() -> set[str]:
        partitions = {partition_of("recorder", eid) for eid in ids}
        return {o for p, (_, o) in store.partition_owners().items() if p in partitions and o}

    eventually(lambda: len(owners()) >= 2, timeout_s=60)
    sent += [
        (eid, send("recorder", eid, "record", seq, 0.005)) for seq in range(40, 80) for eid in ids
    ]
    assert replies_per_entity(sent) == {eid: list(range(1, 81)) for eid in ids}
    pids = set()
    for eid in ids:
        log = read("recorder", eid).state["log"]
        assert [entry[0] for entry in log] == list(range(80))
        for before, after in itertools.pairwise(log):
            assert after[2] >= before[3], f"{eid}: {after} started before {before} ended"
        pids.update(entry[1] for entry in log)
    assert len(pids) >= 2  # the stream really moved between processes
