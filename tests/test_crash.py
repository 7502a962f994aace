"""Crashes: kill -9 of the only worker mid-stream loses nothing, doubles nothing, reorders nothing.

The worker is killed while it is applying a stream (after some commits, with
messages in flight and more queued behind them); a new worker takes the partitions over
once the dead one's leases expire.
"""

from __future__ import annotations

import signal

from entities import read
from tests.delivery import collect, increments, processed_count, queues_drained
from tests.lifecycle import eventually

ENTITIES = [f"k{i:02d}" for i in range(20)]
PER_ENTITY = 150


def test_kill_9_mid_stream_loses_and_doubles_nothing(workers, store, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given 3,000 increments over 20 counters being applied, when the only worker is
    killed with SIGKILL and a new one started, then every AsyncResult gets its reply,
    each counter replies exactly 1..150 with no duplicate, and commits exactly 150."""
    total = len(ENTITIES) * PER_ENTITY
    sent = increments(ENTITIES, PER_ENTITY * 2 // 3)
    [first] = workers.start(1, wait=False)  # kill it while it works, not once it is idle
    eventually(lambda: processed_count(store) >= 300, timeout_s=60, interval_s=0.01)
    first.kill(signal.SIGKILL)
    killed_at = processed_count(store)
    assert killed_at < len(sent)  # really mid-stream
    sent += increments(ENTITIES, PER_ENTITY // 3)  # queued behind the ones in flight
    workers.start(1)

    replies = collect([r for _, r in sent])
    grouped: dict[str, list[int]] = {}
    for (eid, _), reply in zip(sent, replies, strict=True):
        grouped.setdefault(eid, []).append(reply)
    assert grouped == {eid: list(range(1, PER_ENTITY + 1)) for eid in ENTITIES}
    assert {eid: read("counter", eid).state["count"] for eid in ENTITIES} == dict.fromkeys(
        ENTITIES, PER_ENTITY
    )
    assert processed_count(store) == total
    eventually(lambda: queues_drained(redis_client))
