"""Breaking the cluster on purpose: kill -9, SIGSTOP past the lease, churn under load.

Real Redis, Postgres and worker processes. Each scenario runs short by
default; ``pytest -m slow`` runs the long versions (2,000 messages, a kill
every 2 s, ...). Failover times are measured and printed, never asserted.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from entities import read
from entities.inspect import cluster_status
from entities.routing import lease_key, partition_for
from tests.lifecycle import eventually
from tests.test_cluster import counters, fair
from tests.test_cluster_kit import Load, check_exact, overlaps, pid_of

PARTITIONS = 16


class Chaos(threading.Thread):
    """Kills a random live worker with SIGKILL every ``every_s`` and starts a replacement."""

    def __init__(self, workers: Any, every_s: float, seed: int = 5) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.every_s = every_s
        self.random = random.Random(seed)
        self.kills = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            alive = [p for p in self.workers.procs if p.alive()]
            if alive:
                self.random.choice(alive).kill(signal.SIGKILL)
                self.kills += 1
            self.workers.start(1, wait=False)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


@pytest.mark.parametrize(
    ("entities", "messages", "duration_s"),
    [
        pytest.param(20, 300, 6.0, id="short"),
        pytest.param(50, 2000, 24.0, id="long", marks=pytest.mark.slow),
    ],
)
def test_kill_9_every_2s_loses_doubles_and_reorders_nothing(
    workers,
    store,
    capsys,
    entities: int,
    messages: int,
    duration_s: float,  # type: ignore[no-untyped-def]
) -> None:
    """Given three workers, when a random one is killed with SIGKILL every 2 s (and
    restarted) while messages stream to many entities, then every caller gets its reply,
    each entity replied 1..n in send order, and its committed count is n."""
    workers.start(3)
    load = Load("tally", [f"k{i}" for i in range(entities)])
    chaos = Chaos(workers, every_s=2.0)
    chaos.start()
    try:
        load.send(messages, duration_s)
    finally:
        chaos.stop()
    replies = load.replies(timeout_s=180)
    check_exact(replies, "tally", read)
    assert store.dead_letters() == []
    assert chaos.kills >= int(duration_s / 2) - 1
    report(capsys, f"chaos: {messages} messages, {chaos.kills} kill -9s, all replies exact")


@pytest.mark.parametrize(
    ("entities", "rounds"),
    [
        pytest.param(6, 20, id="short"),
        pytest.param(10, 80, id="long", marks=pytest.mark.slow),
    ],
)
def test_no_two_workers_ever_apply_one_entitys_messages_at_once(
    workers,
    entities: int,
    rounds: int,  # type: ignore[no-untyped-def]
) -> None:
    """Given recorder entities under load while workers join, leave gracefully and are
    killed, then each entity's committed log holds every message once, in send order, and
    no two entries (from one worker or two) overlap in time."""
    from workers import send_to_entity

    workers.start(1)
    ids = [f"rec{i}" for i in range(entities)]
    results: dict[str, list[Any]] = {e: [] for e in ids}
    churn = [
        lambda: workers.start(1, wait=False),
        lambda: workers.start(1, wait=False),
        lambda: workers.procs[0].kill(signal.SIGTERM),
        lambda: next(p for p in workers.procs if p.alive()).kill(signal.SIGKILL),
        lambda: workers.start(1, wait=False),
    ]
    for seq in range(rounds):
        if seq % max(1, rounds // len(churn)) == 0 and churn:
            churn.pop(0)()
        for e in ids:
            msg = {"op": "record", "args": [seq, 0.005]}
            results[e].append(send_to_entity.delay("recorder", e, msg))
        time.sleep(0.25)

    pids: set[int] = set()
    for e in ids:
        assert [r.get(timeout=120) for r in results[e]] == list(range(1, rounds + 1))
        log = read("recorder", e).state["log"]
        assert [entry[0] for entry in log] == list(range(rounds)), e
        assert overlaps(log) == [], e
        pids.update(entry[1] for entry in log)
    assert len(pids) >= 2  # the entities really moved between workers


def test_a_paused_owner_cannot_commit_after_another_took_over(
    workers,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Given an owner paused (SIGSTOP) inside a handler past its lease, when another worker
    takes the partition and serves the message, then on waking (SIGCONT) the paused worker's
    commit is rejected, logged and counted as a zombie-writer event, and none of its writes
    land."""
    from workers import send_to_entity

    first, second = workers.start(2, wait=False)
    status = eventually(lambda: fair(2), timeout_s=60)
    entity = next(
        f"z{i}"
        for i in range(1000)
        if pid_of(status.partition_of("stall", f"z{i}").owner) == first.pid
    )

    def record(seq: int, **kwargs: Any) -> Any:
        args = [seq, kwargs.get("hold_s", 0.0), kwargs.get("started_file")]
        return send_to_entity.delay("stall", entity, {"op": "record", "args": args})

    assert record(0).get(timeout=30) == 1
    before = cluster_status().partition_of("stall", entity)
    started = tmp_path / "started"
    held = record(1, hold_s=3.0, started_file=str(started))
    eventually(started.exists, timeout_s=30, interval_s=0.01)
    first.kill(signal.SIGSTOP)
    try:
        taken = eventually(
            lambda: (
                (p := cluster_status().partition_of("stall", entity))
                and pid_of(p.owner) == second.pid
                and p.settled
                and p
            ),
            timeout_s=30,
        )
        assert taken.epoch > before.epoch
        assert held.get(timeout=30) == 2  # served again by the new owner, from in flight
        assert record(2).get(timeout=30) == 3
    finally:
        first.kill(signal.SIGCONT)

    stats = eventually(
        lambda: [
            w
            for w in cluster_status().workers
            if pid_of(w.worker) == first.pid and w.zombie_events >= 1
        ],
        timeout_s=30,
    )
    assert stats[0].zombie_events >= 1
    assert "zombie writer" in first.output()
    log = read("stall", entity).state["log"]
    assert [(seq, pid) for seq, pid, *_ in log] == [
        (0, first.pid),
        (1, second.pid),
        (2, second.pid),
    ]
    assert first.alive()
    eventually(lambda: fair(2), timeout_s=60)  # it rejoined and serves again
    assert record(3).get(timeout=30) == 4
    assert counters(cluster_status(), "zombie_events") >= 1


@pytest.mark.parametrize(
    ("ttl_s", "rounds"),
    [
        pytest.param(2.0, 1, id="short"),
        pytest.param(4.0, 3, id="default-ttl", marks=pytest.mark.slow),
    ],
)
def test_failover_time_after_kill_9_is_measured(
    workers,
    redis_client,
    capsys,
    ttl_s: float,
    rounds: int,  # type: ignore[no-untyped-def]
) -> None:
    """Given two workers, when the owner of an entity's partition is killed with SIGKILL and
    a message is sent to that entity at once, then another worker takes the lease and
    replies; the times are printed (they depend on the lease TTL and the machine)."""
    from workers import send_to_entity

    workers.start(2, ENTITIES_LEASE_TTL=str(ttl_s))
    lines = []
    for round_no in range(rounds):
        status = eventually(lambda: fair(2), timeout_s=60)
        victim = next(p for p in workers.procs if p.alive())
        entity = next(
            f"f{round_no}-{i}"
            for i in range(1000)
            if pid_of(status.partition_of("tally", f"f{round_no}-{i}").owner) == victim.pid
        )
        assert send_to_entity.delay("tally", entity, {"op": "add"}).get(timeout=30) == 1
        key = lease_key(partition_for("tally", entity, PARTITIONS))
        old = redis_client.get(key)
        killed = time.monotonic()
        victim.kill(signal.SIGKILL)
        result = send_to_entity.delay("tally", entity, {"op": "add"})
        taken = None
        while not result.ready():
            holder = redis_client.get(key)
            if taken is None and holder not in (None, old):
                taken = time.monotonic() - killed
            if time.monotonic() - killed > 60:
                raise AssertionError("no failover within 60 s")
            time.sleep(0.01)
        replied = time.monotonic() - killed
        assert result.get(timeout=1) == 2
        lines.append(
            f"failover (lease TTL {ttl_s:g} s): lease taken after "
            f"{taken if taken is not None else replied:.2f} s, reply after {replied:.2f} s"
        )
        workers.start(1, ENTITIES_LEASE_TTL=str(ttl_s), wait=False)
    report(capsys, "\n".join(lines))


def test_a_writer_stalled_inside_its_commit_does_not_block_the_next_owner(workers) -> None:  # type: ignore[no-untyped-def]
    """Given a worker session stalled inside a commit (holding the share lock on a
    partition's epoch, as a worker paused mid-commit does), when a worker claims that
    partition, then Postgres ends the stalled session after the lease TTL, the claim goes
    through and the partition serves; the stalled writer can commit nothing."""
    import os

    import sqlalchemy as sa

    from entities.store import schema
    from workers import send_to_entity
    from workers.service import worker_database_url

    partition = partition_for("tally", "stuck", PARTITIONS)
    engine = sa.create_engine(worker_database_url(os.environ["ENTITIES_DATABASE_URL"], 2.0))
    stalled = engine.connect()
    stalled.begin()
    rows = schema.partitions.c
    stalled.execute(
        sa.select(rows.epoch).where(rows.partition == partition).with_for_update(read=True)
    )
    try:
        workers.start(1)
        assert send_to_entity.delay("tally", "stuck", {"op": "add"}).get(timeout=30) == 1
        with pytest.raises(sa.exc.DBAPIError, match="idle-in-transaction timeout"):
            stalled.execute(sa.text("SELECT 1"))
    finally:
        stalled.invalidate()
        engine.dispose()
