"""Timed drains: a pre-filled queue, a worker started on it, the clock from its first take.

The messages are published first, onto queues nobody consumes yet; then the
worker process starts. The clock starts when it begins to consume (ours: its
first partition lease; Celery: its worker_ready signal, sent as its consumer
starts) and stops when the last reply is stored (and, for the hot entity, the
last message is acknowledged: queue and in-flight list empty). Interpreter
start-up and imports are left out; taking partitions is counted, and how long
it took is recorded (``all_serving_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.procs import WorkerProcess
from bench.systems import BOOT_TIMEOUT_S, ENTITY_TYPE, Run, System
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
    #: Seconds from the first take until every partition was served (None: not seen).
    all_serving_s: float | None = None

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
            "all_serving_s": None if self.all_serving_s is None else round(self.all_serving_s, 3),
            "check": self.check,
        }


def drain_ids(messages: int, entities: int, prefix: str = "e") -> list[str]:
    """Entity ids of ``messages`` messages spread round-robin over ``entities`` entities."""
    return [f"{prefix}{i % entities}" for i in range(messages)]


def timed_drain(
    run: Run,
    system: System,
    entity_ids: Sequence[str],
    name: str,
    workers: int = 1,
    acked: bool = False,
    profiler: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None,
    keep: bool = False,
) -> tuple[Drain, list[WorkerProcess]]:
    """Publishes, starts ``workers`` worker processes and times until every reply is stored.

    ``acked``: also wait until our partition queues and in-flight lists are
    empty (every message acknowledged), for the hot-entity figure.
    ``profiler(pid)``: a context manager around the timed part (py-spy).
    ``keep``: leave the workers running and return them (else they are stopped).
    """
    publish_started = time.perf_counter()
    sent = system.publish(entity_ids)
    publish_s = time.perf_counter() - publish_started
    names = [name] if workers == 1 else [f"{name}-{i}" for i in range(workers)]
    started_workers = [system.spawn(n) for n in names]
    try:
        timeout_s = 120.0 + len(sent) / 100
        started = _wait_consuming(system, started_workers)
        cpu0 = sum(w.cpu_s() for w in started_workers)
        serving = _ServingWatch(system, started_workers)
        with profiler(started_workers[0].pid) if profiler else contextlib.nullcontext():
            done = wait_replies(run.redis, sent, timeout_s)
            if acked:
                done = _wait_acked(run, sent, timeout_s)
        cpu = sum(w.cpu_s() for w in started_workers) - cpu0
        serving_s = serving.stop(started)
        for w in started_workers:
            w.check_alive()
        check = check_replies(run.redis, sent, system.counting)
    except BaseException:
        for w in started_workers:
            w.stop()
        raise
    if not keep:
        for w in started_workers:
            w.stop()
    drain = Drain(system.name, len(sent), done - started, cpu, check, publish_s, serving_s)
    return drain, started_workers


class _ServingWatch(threading.Thread):
    """Notes when the worker(s) serve every partition, polling every 5 ms in the background."""

    def __init__(self, system: System, workers: list[WorkerProcess]) -> None:
        super().__init__(name="bench-serving-watch", daemon=True)
        self.system, self.workers = system, workers
        self.at: float | None = None
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.is_set():
            if self.system.all_serving(self.workers):
                self.at = time.perf_counter()
                return
            self._stop_event.wait(0.005)

    def stop(self, started: float) -> float | None:
        """Seconds from ``started`` until everything was served, if it was."""
        self._stop_event.set()
        self.join(5)
        return None if self.at is None else max(0.0, self.at - started)


def _wait_consuming(system: System, workers: list[WorkerProcess]) -> float:
    """The perf_counter time at which the first of ``workers`` began to consume (2 ms polls)."""
    deadline = time.perf_counter() + BOOT_TIMEOUT_S
    polls = 0
    while not any(system.consuming(w) for w in workers):
        polls += 1
        if polls % 25 == 0:
            for w in workers:
                w.check_alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no worker consumed within {BOOT_TIMEOUT_S}s")
        time.sleep(0.002)
    return time.perf_counter()


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
