"""Fences with real workers: a stale entity version or a stale partition epoch changes nothing.

The version fence is tested by changing a row behind the worker's back while
it holds the entity in memory; the epoch fence by claiming a worker's
partition from outside, and by freezing a worker in the middle of a handler
until another worker has taken its partition over.
"""

from __future__ import annotations

import json
import signal
import time

import sqlalchemy as sa

from entities import read
from entities.routing import inflight_key
from tests.delivery import REPLY_TIMEOUT_S, call, partition_of, send
from tests.lifecycle import eventually


def test_a_row_changed_behind_the_workers_back_is_reloaded_not_overwritten(  # type: ignore[no-untyped-def]
    workers, store
) -> None:
    """Given a worker holding counter f at version 1 in memory, when someone writes version 2
    (count 100) directly in SQL, then the next increment applies on 100, not on the stale 1,
    and the stale write never lands."""
    workers.start(1)
    assert call("counter", "f", "increment", 1) == 1
    with store.engine.begin() as conn:
        changed = conn.execute(
            sa.text(
                "UPDATE entity_snapshots SET version = version + 1, state = CAST(:state AS JSONB) "
                "WHERE entity_type = 'counter' AND entity_id = 'f'"
            ),
            {"state": json.dumps({"count": 100})},
        ).rowcount
    assert changed == 1
    assert call("counter", "f", "increment", 1) == 101
    snapshot = read("counter", "f")
    assert (snapshot.version, snapshot.state) == (3, {"count": 101})
    assert call("counter", "f", "get") == 101


def test_a_deleted_row_behind_the_workers_back_is_not_resurrected_from_memory(  # type: ignore[no-untyped-def]
    workers, store
) -> None:
    """Given a worker holding counter g in memory, when its row is deleted in SQL, then the
    next increment starts from the defaults instead of writing the stale in-memory count."""
    workers.start(1)
    assert call("counter", "g", "increment", 5) == 5
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM entity_snapshots WHERE entity_id = 'g'"))
    assert call("counter", "g", "increment", 1) == 1
    assert read("counter", "g").state == {"count": 1}


def test_an_owner_whose_partition_was_claimed_again_commits_nothing(workers, store) -> None:  # type: ignore[no-untyped-def]
    """Given a worker owning a partition, when the partition's epoch is claimed from outside,
    then the worker's next commit is refused, and the message is applied exactly once after
    the partition is owned again."""
    workers.start(1)
    assert call("counter", "z", "increment", 1) == 1
    partition = partition_of("counter", "z")
    epoch = store.claim_partition(partition, "intruder")
    reply = send("counter", "z", "increment", 1).get(timeout=REPLY_TIMEOUT_S)
    assert reply == 2
    assert read("counter", "z").state == {"count": 2}
    new_epoch, owner = store.partition_owners()[partition]
    assert new_epoch > epoch and owner != "intruder"


def test_a_frozen_owner_that_wakes_after_a_takeover_commits_nothing(  # type: ignore[no-untyped-def]
    workers, redis_client
) -> None:
    """Given worker A frozen (SIGSTOP) inside a handler, when worker B takes the partition
    over and applies the message, and A then wakes up and finishes its handler, then only
    B's application is committed: A's commit is refused by the epoch fence."""
    [frozen] = workers.start(1)
    message = send("recorder", "slow", "record", 0, 3.0)
    inflight = inflight_key(partition_of("recorder", "slow"))
    eventually(lambda: redis_client.llen(inflight) == 1)  # A took it and runs the handler
    time.sleep(0.5)
    frozen.kill(signal.SIGSTOP)
    try:
        [taker] = workers.start(1, wait=False)
        assert message.get(timeout=REPLY_TIMEOUT_S) == 1
    finally:
        frozen.kill(signal.SIGCONT)
    eventually(lambda: "zombie" in frozen.output(), timeout_s=60)
    assert call("recorder", "slow", "record", 1) == 2
    log = read("recorder", "slow").state["log"]
    assert [entry[0] for entry in log] == [0, 1]
    assert log[0][1] == taker.pid  # the frozen worker's application never landed
