"""Failover: kill -9 the owner of a probe entity's partition under load; time until it serves.

Two workers share the partitions with the default lease time-to-live. A
paced load of increments runs over many entities, published by a thread of
its own so the measuring loop is never held up by it; the worker that owns
the probe entity's partition is killed with SIGKILL, one probe message is
sent at once, and the figure is the time from the kill until the probe's reply
is stored (polled every 2 ms). Afterwards every load reply is read: a counter
replies n to its n-th message, so any lost, doubled or reordered message shows.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from bench import procs, servers
from bench.systems import ENTITY_TYPE, Ours, Run
from bench.traffic import Sent, check_replies, no_result_subscriptions, result_key, wait_replies

LOAD_ENTITIES = 200
WARM_LOAD_S = 2.0
AFTER_LOAD_S = 1.0
TIMEOUT_S = 60.0


def measure(run: Run, load_per_s: float, round_no: int) -> dict[str, Any]:
    """One failover: the seconds until the probe replied, and the integrity check."""
    from entities.routing import lease_key, partition_for
    from entities.settings import Settings
    from workers import app

    servers.reset(run.servers)
    ours = Ours(run)
    w1 = ours.spawn(f"failover{round_no}-a")
    w2 = ours.spawn(f"failover{round_no}-b")
    load = _Load(run, load_per_s)
    try:
        procs.wait_until(lambda: _shared(run, w1, w2), w1, 60.0, "two workers did not share")
        with no_result_subscriptions(app):
            load.start()
            time.sleep(WARM_LOAD_S)
            victim, survivor = w1, w2
            probe = _probe_id(run, victim.pid)
            lease = lease_key(partition_for(ENTITY_TYPE, probe, run.partitions))
            old_token: bytes | None = run.redis.get(lease)  # type: ignore[assignment]
            killed_at = dt.datetime.now(dt.UTC)
            killed = time.perf_counter()
            victim.kill9()
            probe_sent = load.send(probe)
            takeover, replied = _watch(run, lease, old_token, probe_sent, killed)
            time.sleep(AFTER_LOAD_S)
            load.stop()
        wait_replies(run.redis, load.sent, TIMEOUT_S)
        check = check_replies(run.redis, load.sent, counting=True)
        survivor.check_alive()
    finally:
        load.stop()
        for w in (w1, w2):
            w.stop()
    return {
        "seconds": round(replied, 3),
        "lease_takeover_s": None if takeover is None else round(takeover, 3),
        "lease_ttl_s": Settings.lease_ttl_s,
        "killed_at": killed_at.isoformat(timespec="milliseconds"),
        "victim_log": str(victim.log_path),
        "survivor_log": str(survivor.log_path),
        "load_per_s": load_per_s,
        "load_sent_per_s": round(load.rate(), 1),
        "messages": len(load.sent),
        "check": check,
    }


def _watch(
    run: Run, lease: str, old_token: bytes | None, probe: Sent, killed: float
) -> tuple[float | None, float]:
    """Polls every 2 ms: (seconds until the lease changed hands, until the probe replied)."""
    takeover: float | None = None
    while True:
        now = time.perf_counter()
        with run.redis.pipeline(transaction=False) as pipe:
            pipe.get(lease)
            pipe.exists(result_key(probe.task_id))
            token, replied = pipe.execute()
        if takeover is None and token not in (old_token, None):
            takeover = now - killed
        if replied:
            return takeover, now - killed
        if now - killed > TIMEOUT_S:
            raise TimeoutError(f"probe not served {TIMEOUT_S}s after the kill")
        time.sleep(0.002)


def _shared(run: Run, w1: procs.WorkerProcess, w2: procs.WorkerProcess) -> bool:
    w2.check_alive()
    a = procs.owned_by(run.redis, run.partitions, w1.pid)
    b = procs.owned_by(run.redis, run.partitions, w2.pid)
    return bool(a) and bool(b) and len(a) + len(b) == run.partitions


def _probe_id(run: Run, pid: int) -> str:
    from entities.routing import partition_for

    owned = set(procs.owned_by(run.redis, run.partitions, pid))
    for i in range(10_000):
        candidate = f"probe-{i}"
        if partition_for(ENTITY_TYPE, candidate, run.partitions) in owned:
            return candidate
    raise RuntimeError("no probe id lands on the victim's partitions")


class _Load(threading.Thread):
    """Publishes increments round-robin over LOAD_ENTITIES entities, ``per_s`` a second.

    Every TICK_S it publishes what is due in one pipelined batch. A publisher
    that falls more than a second behind does not burst to catch up: the load
    is a ceiling, and ``rate()`` says what was sent.
    """

    TICK_S = 0.02

    def __init__(self, run: Run, per_s: float) -> None:
        super().__init__(name="bench-load", daemon=True)
        self.bench_run = run
        self.per_s = per_s
        self.sent: list[Sent] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._started_at = self._stopped_at = 0.0

    def send(self, entity_id: str) -> Sent:
        """Publishes one increment to ``entity_id`` now (from any thread)."""
        return self._send_many([entity_id])[0]

    def _send_many(self, entity_ids: list[str]) -> list[Sent]:
        from entities.routing import partition_for, queue_name
        from workers import app, send_to_entity

        partitions = self.bench_run.partitions
        out = []
        with self._lock, app.producer_or_acquire() as producer, producer.batch():
            for entity_id in entity_ids:
                seq = self._counts[entity_id] = self._counts.get(entity_id, 0) + 1
                result = send_to_entity.apply_async(
                    (ENTITY_TYPE, entity_id, {"op": "increment", "args": [1]}),
                    producer=producer,
                )
                queue = queue_name(partition_for(ENTITY_TYPE, entity_id, partitions))
                out.append(Sent(result.id, queue, entity_id, seq))
            self.sent.extend(out)
        return out

    def run(self) -> None:
        self._started_at = time.perf_counter()
        done = 0
        while not self._stop_event.wait(self.TICK_S):
            due = int((time.perf_counter() - self._started_at) * self.per_s)
            done = max(done, due - int(self.per_s))  # more than a second behind: skip
            if due > done:
                self._send_many([f"load-{i % LOAD_ENTITIES}" for i in range(done, due)])
                done = due
        self._stopped_at = time.perf_counter()

    def stop(self) -> None:
        """Stops publishing and waits for the thread."""
        self._stop_event.set()
        if self.is_alive():
            self.join(30)

    def rate(self) -> float:
        """Load messages actually sent per second."""
        elapsed = (self._stopped_at or time.perf_counter()) - self._started_at
        return len(self.sent) / elapsed if elapsed > 0 else 0.0
