"""Failover: kill -9 the owner of a probe entity's partition under load; time until it serves.

Two workers share the partitions with the default lease time-to-live. A
paced load of increments runs over many entities; the worker that owns the
probe entity's partition is killed with SIGKILL, one probe message is sent at
once, and the figure is the time from the kill until the probe's reply is
stored. Afterwards every load reply is read: a counter replies n to its n-th
message, so any lost, doubled or reordered message shows.
"""

from __future__ import annotations

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
    """One failover: returns the seconds until the probe replied, and the integrity check."""
    from entities.routing import lease_key, partition_for
    from entities.settings import Settings

    servers.reset(run.servers)
    ours = Ours(run)
    w1 = ours.start(f"failover{round_no}-a", lease_ttl_s=None, wait=False)
    w2 = ours.start(f"failover{round_no}-b", lease_ttl_s=None, wait=False)
    try:
        procs.wait_until(lambda: _shared(run, w1, w2), w1, 60.0, "two workers did not share")
        load = _Load(run, load_per_s)
        load.run_for(WARM_LOAD_S)
        victim, survivor = (w1, w2)
        probe = _probe_id(run, victim.pid)
        probe_partition = partition_for(ENTITY_TYPE, probe, run.partitions)
        old_token = run.redis.get(lease_key(probe_partition))
        killed = time.perf_counter()
        victim.kill9()
        probe_sent = load.send(probe)
        takeover = replied = None
        while replied is None:
            load.pump()
            now = time.perf_counter()
            if takeover is None and run.redis.get(lease_key(probe_partition)) not in (
                old_token,
                None,
            ):
                takeover = now - killed
            if run.redis.exists(result_key(probe_sent.task_id)):
                replied = now - killed
            elif now - killed > TIMEOUT_S:
                raise TimeoutError(f"probe not served {TIMEOUT_S}s after the kill")
            time.sleep(0.002)
        load.run_for(AFTER_LOAD_S)
        wait_replies(run.redis, load.sent, TIMEOUT_S)
        check = check_replies(run.redis, load.sent, counting=True)
        survivor.check_alive()
    finally:
        for w in (w1, w2):
            w.stop()
    return {
        "seconds": round(replied, 3),
        "lease_takeover_s": None if takeover is None else round(takeover, 3),
        "lease_ttl_s": Settings.lease_ttl_s,
        "load_per_s": load_per_s,
        "messages": len(load.sent),
        "check": check,
    }


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


class _Load:
    """A paced publisher of increments, round-robin over LOAD_ENTITIES entities."""

    def __init__(self, run: Run, per_s: float) -> None:
        self.run = run
        self.interval_s = 1.0 / per_s
        self.sent: list[Sent] = []
        self._counts: dict[str, int] = {}
        self._next = time.perf_counter()
        self._i = 0

    def send(self, entity_id: str) -> Sent:
        """Publishes one increment to ``entity_id`` now."""
        from entities.routing import partition_for, queue_name
        from workers import app, send_to_entity

        seq = self._counts[entity_id] = self._counts.get(entity_id, 0) + 1
        with no_result_subscriptions(app):
            result = send_to_entity.apply_async(
                (ENTITY_TYPE, entity_id, {"op": "increment", "args": [1]})
            )
        queue = queue_name(partition_for(ENTITY_TYPE, entity_id, self.run.partitions))
        sent = Sent(result.id, queue, entity_id, seq)
        self.sent.append(sent)
        return sent

    def pump(self) -> None:
        """Publishes every load message that is due by now."""
        now = time.perf_counter()
        while self._next <= now:
            self.send(f"load-{self._i % LOAD_ENTITIES}")
            self._i += 1
            self._next += self.interval_s

    def run_for(self, seconds: float) -> None:
        """Keeps the load going for ``seconds``."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.pump()
            time.sleep(0.002)
