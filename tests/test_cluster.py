"""A cluster of workers: fair shares, rebalancing on join and leave, graceful handoffs.

Real Redis, Postgres and worker processes; ownership is read with
``entities.inspect.cluster_status`` as an operator would.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter

from entities import read
from entities.inspect import ClusterStatus, cluster_status
from tests.lifecycle import eventually
from tests.test_cluster_kit import Load, call, check_exact, pid_of

PARTITIONS = 16


def fair(n: int) -> ClusterStatus | None:
    """The status once ``n`` live workers hold every partition, each at most its share."""
    status = cluster_status()
    owners = Counter(p.owner for p in status.partitions)
    share = math.ceil(PARTITIONS / n)
    if (
        None in owners
        or len(owners) != n
        or max(owners.values()) > share
        or not all(p.settled for p in status.partitions)
        or len(status.live_workers) != n
    ):
        return None
    return status


def counters(status: ClusterStatus, name: str) -> int:
    return sum(int(w.stats.get(name, 0)) for w in status.workers)


def test_cluster_status_shows_owners_epochs_and_queue_depths(workers, redis_client) -> None:  # type: ignore[no-untyped-def]
    """Given messages queued while no worker runs, then the status shows them queued on
    their partition with no owner; once a worker starts, it owns every partition at a new
    epoch and the queue drains."""
    from entities.routing import partition_for, queue_name

    partition = partition_for("tally", "s", PARTITIONS)
    for i in range(3):
        redis_client.lpush(queue_name(partition), call("tally", "s", "add", task_id=f"s{i}"))
    before = cluster_status()
    assert before.unowned == list(range(PARTITIONS))
    assert before.partitions[partition].queued == 3
    assert before.partition_of("tally", "s").partition == partition
    assert before.live_workers == []

    (worker,) = workers.start(1)
    after = eventually(lambda: (s := fair(1)) and s.partitions[partition].queued == 0 and s)
    (worker_id,) = after.live_workers
    assert pid_of(worker_id) == worker.pid
    assert after.owned_by(worker_id) == list(range(PARTITIONS))
    assert all(p.epoch > before.partitions[p.partition].epoch for p in after.partitions)
    assert eventually(lambda: read("tally", "s")).state == {"count": 3}
    assert f"{partition:>4}  {worker_id}" in after.render()


def test_partitions_are_shared_fairly_and_rebalanced_on_join_and_leave(workers) -> None:  # type: ignore[no-untyped-def]
    """Given three workers, then each holds at most ceil(16/3) partitions; when one leaves
    gracefully the two left take 8 each; when a new one joins, shares shrink again; and no
    graceful move ever rejected a commit or lost a lease."""
    first, second, third = workers.start(3, wait=False)
    eventually(lambda: fair(3), timeout_s=60)

    third.kill(signal.SIGTERM)
    two = eventually(lambda: fair(2), timeout_s=60)
    assert sorted(Counter(p.owner for p in two.partitions).values()) == [8, 8]

    workers.start(1, wait=False)
    three = eventually(lambda: fair(3), timeout_s=60)
    assert counters(three, "handoffs") > 0
    assert counters(three, "zombie_events") == 0
    assert counters(three, "leases_lost") == 0
    assert {pid_of(w) for w in three.live_workers} & {first.pid, second.pid}


def test_graceful_handoffs_keep_every_entitys_order(workers) -> None:  # type: ignore[no-untyped-def]
    """Given relaxed (interval) entities under steady load on one worker, when a second and a
    third join and then the first leaves, then every entity replied 1..n in send order and
    its committed count is n: each handoff committed what it held before the next owner
    read."""
    workers.start(1)
    load = Load("relaxed_tally", [f"r{i}" for i in range(12)])
    sender = threading.Thread(target=load.send, args=(240, 6.0))
    sender.start()
    time.sleep(1.0)
    workers.start(1, wait=False)
    time.sleep(1.5)
    workers.start(1, wait=False)
    time.sleep(1.5)
    workers.procs[0].kill(signal.SIGTERM)
    sender.join()

    replies = load.replies(timeout_s=120)
    eventually(
        lambda: all(
            (s := read("relaxed_tally", e)) and s.state["count"] == len(r)
            for e, r in replies.items()
        ),
        timeout_s=30,
    )
    check_exact(replies, "relaxed_tally", read)
    status = cluster_status()
    assert counters(status, "zombie_events") == 0
