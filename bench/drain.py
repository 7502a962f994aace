"""Timed drains: a frozen worker, a pre-filled queue, the clock from thaw to the last reply.

The worker boots, takes its partitions (ours) or starts consuming (Celery),
and is frozen with SIGSTOP; the messages are published; the clock starts at
SIGCONT and stops when the last reply is stored (and, for the hot entity, the
batch is acknowledged: its queue and in-flight list are empty). Start-up time
is left out, so the figure is the consumption rate of each system.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from bench.procs import WorkerProcess
from bench.systems import ENTITY_TYPE, Run, System
from bench.traffic import Sent, check_replies, wait_replies


@dataclasses.dataclass
class Drain:
    """One timed drain."""

    system: str
    messages: int
    seconds: float
    worker_cpu_s: float
    check: dict[str, int]
    publish_s: float = 0.0

    @property
    def per_s(self) -> float:
        """Messages replied per second."""
        return self.messages / self.seconds

    def as_json(self) -> dict[str, Any]:
        """The drain as a JSON object."""
        return {
            "system": self.system,
            "messages": self.messages,
            "seconds": round(self.seconds, 4),
            "per_s": round(self.per_s, 1),
            "worker_cpu_s": round(self.worker_cpu_s, 3),
            "worker_cpu_ms_per_msg": round(1000 * self.worker_cpu_s / self.messages, 4),
            "worker_cpu_share": round(self.worker_cpu_s / self.seconds, 3),
            "publish_s": round(self.publish_s, 2),
            "check": self.check,
        }


def drain_ids(messages: int, entities: int, prefix: str = "e") -> list[str]:
    """Entity ids of ``messages`` messages spread round-robin over ``entities`` entities."""
    return [f"{prefix}{i % entities}" for i in range(messages)]


def timed_drain(
    run: Run,
    system: System,
    worker: WorkerProcess,
    entity_ids: Sequence[str],
    profiler: contextlib.AbstractContextManager[Any] | None = None,
    acked: bool = False,
) -> Drain:
    """Freezes ``worker``, publishes, thaws it and times until every reply is stored.

    ``acked``: also wait until our partition queues and in-flight lists are
    empty (every message acknowledged), for the hot-entity figure.
    """
    worker.freeze()
    publish_started = time.perf_counter()
    try:
        sent = system.publish(entity_ids)
    except BaseException:
        worker.thaw()
        raise
    publish_s = time.perf_counter() - publish_started
    timeout_s = 120.0 + len(sent) / 100
    with profiler or contextlib.nullcontext():
        cpu0 = worker.cpu_s()
        started = time.perf_counter()
        worker.thaw()
        done = wait_replies(run.redis, sent, timeout_s)
        if acked:
            done = _wait_acked(run, sent, timeout_s)
        cpu = worker.cpu_s() - cpu0
    worker.check_alive()
    check = check_replies(run.redis, sent, system.counting)
    return Drain(system.name, len(sent), done - started, cpu, check, publish_s)


def _wait_acked(run: Run, sent: Sequence[Sent], timeout_s: float) -> float:
    from entities.routing import inflight_key

    queues = sorted({s.queue for s in sent})
    keys = queues + [inflight_key(_partition(q)) for q in queues]
    deadline = time.perf_counter() + timeout_s
    while True:
        with run.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            if sum(pipe.execute()) == 0:
                return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError("messages not acknowledged in time")
        time.sleep(0.002)


def _partition(queue: str) -> int:
    """The partition number of an `entities.{pN}` queue name."""
    return int(queue.split("{p", 1)[1].rstrip("}"))


def hot_ids(messages: int) -> list[str]:
    """Entity ids of the hot-entity run: every message to one entity."""
    return ["hot"] * messages


__all__ = ["ENTITY_TYPE", "Drain", "drain_ids", "hot_ids", "timed_drain"]
