"""The three systems under measurement, behind one small interface.

``Ours``: `celery -A workers worker`, strict Counter entities in bench.entities.
``HandRolled`` (baseline A) and ``Noop`` (baseline B): bench.baselines.
Each starts its worker, publishes pre-filled messages and makes one
sequential call; everything else in a measurement is shared.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench import procs
from bench.servers import Servers, redis_client
from bench.traffic import Sent, publish

#: Seconds a worker may take to boot and take its partitions.
BOOT_TIMEOUT_S = 60.0
#: Seconds one sequential call may take.
CALL_TIMEOUT_S = 10.0
ENTITY_TYPE = "counter"


@dataclasses.dataclass
class Run:
    """What every measurement of one run shares: servers, a Redis client, logs, settings."""

    servers: Servers
    home: Path
    partitions: int
    redis: redis.Redis = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis_client(self.servers.redis_url)

    @property
    def log_dir(self) -> Path:
        """Where worker logs go."""
        return self.home / "logs"

    def entities_env(self, lease_ttl_s: float | None = None) -> dict[str, str]:
        """The environment of our workers (and of this process, for its clients)."""
        env = {
            "ENTITIES_BROKER_URL": self.servers.redis_url,
            "ENTITIES_RESULT_BACKEND": self.servers.redis_url,
            "ENTITIES_DATABASE_URL": self.servers.database_url,
            "ENTITIES_MODULES": "bench.entities",
            "ENTITIES_PARTITIONS": str(self.partitions),
            "ENTITIES_HOME": str(self.home / "entities-home"),
        }
        if lease_ttl_s is not None:
            env["ENTITIES_LEASE_TTL"] = str(lease_ttl_s)
        return env

    def baseline_env(self) -> dict[str, str]:
        """The environment of the baseline workers and their client app."""
        return {"BENCH_BROKER_URL": self.servers.redis_url, "BENCH_PG_DSN": self.servers.libpq_dsn}

    def process_env(self, extra: dict[str, str]) -> dict[str, str]:
        """A subprocess environment: ours, with the repo on the path and ``extra`` on top."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITIES_", "BENCH_"))}
        env["PYTHONPATH"] = str(procs.source_root)
        env.update(extra)
        return env


class System:
    """One system: how to start its worker, pre-fill its queue and make a call."""

    name = ""
    label = ""
    #: True when replies are counter values (the seq-th message replies seq).
    counting = True

    def __init__(self, run: Run) -> None:
        self.run = run

    def spawn(self, name: str, lease_ttl_s: float | None = None) -> procs.WorkerProcess:
        """Starts one worker process without waiting for it."""
        raise NotImplementedError

    def consuming(self, worker: procs.WorkerProcess) -> bool:
        """True once ``worker`` has begun to take messages."""
        raise NotImplementedError

    def ready(self, worker: procs.WorkerProcess) -> bool:
        """True once ``worker`` serves everything it will serve (ours: every partition)."""
        return self.consuming(worker)

    def all_serving(self, workers: Sequence[procs.WorkerProcess]) -> bool:
        """True once ``workers`` together serve everything (ours: every partition owned)."""
        return all(self.consuming(w) for w in workers)

    def start(self, name: str, lease_ttl_s: float | None = None) -> procs.WorkerProcess:
        """Starts one worker process and returns once it is ready."""
        worker = self.spawn(name, lease_ttl_s)
        try:
            procs.wait_until(
                lambda: self.ready(worker), worker, BOOT_TIMEOUT_S, f"{name} was not ready"
            )
        except BaseException:
            worker.stop()
            raise
        return worker

    def publish(self, entity_ids: Sequence[str]) -> list[Sent]:
        """Publishes one increment per entry of ``entity_ids``, in order."""
        raise NotImplementedError

    def call(self, entity_id: str) -> Any:
        """One sequential round trip: send, wait for the reply."""
        raise NotImplementedError


def _declare(app: Any, queues: Sequence[Any]) -> None:
    """Declares ``queues`` (their Redis bindings), so nothing published before a worker
    starts is dropped; kombu would skip it, having cached an earlier declaration that a
    reset has flushed."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in queues:
            queue.bind(channel).declare()


class Ours(System):
    """Our worker: partition leases, batched strict commits, pipelined replies."""

    name, label = "ours", "ours (strict)"

    def spawn(self, name: str, lease_ttl_s: float | None = None) -> procs.WorkerProcess:
        env = self.run.process_env(self.run.entities_env(lease_ttl_s))
        return procs.WorkerProcess(
            name, procs.celery_argv("workers", name, "info"), env, self.run.log_dir
        )

    def consuming(self, worker: procs.WorkerProcess) -> bool:
        return bool(procs.owned_by(self.run.redis, self.run.partitions, worker.pid))

    def ready(self, worker: procs.WorkerProcess) -> bool:
        owned = procs.owned_by(self.run.redis, self.run.partitions, worker.pid)
        return len(owned) == self.run.partitions

    def all_serving(self, workers: Sequence[procs.WorkerProcess]) -> bool:
        owned = (procs.owned_by(self.run.redis, self.run.partitions, w.pid) for w in workers)
        return sum(len(o) for o in owned) == self.run.partitions

    def publish(self, entity_ids: Sequence[str]) -> list[Sent]:
        from entities.routing import partition_for, queue_name
        from entities.transport import partition_queue
        from workers import app, send_to_entity

        partitions = self.run.partitions
        _declare(app, [partition_queue(p) for p in range(partitions)])

        def send(producer: Any, entity_id: str, _seq: int) -> tuple[str, str]:
            msg = {"op": "increment", "args": [1]}
            result = send_to_entity.apply_async((ENTITY_TYPE, entity_id, msg), producer=producer)
            return result.id, queue_name(partition_for(ENTITY_TYPE, entity_id, partitions))

        return publish(app, send, entity_ids)

    def call(self, entity_id: str) -> Any:
        from workers import send_to_entity

        msg = {"op": "increment", "args": [1]}
        return send_to_entity.delay(ENTITY_TYPE, entity_id, msg).get(timeout=CALL_TIMEOUT_S)


class _Baseline(System):
    task_name = ""
    prefetch_multiplier = 4

    def _task(self) -> Any:
        from bench import baselines

        return baselines.app.tasks[self.task_name]

    def spawn(self, name: str, lease_ttl_s: float | None = None) -> procs.WorkerProcess:
        env = self.run.process_env(self.run.baseline_env())
        extra = ["-Q", self.task_name, "--prefetch-multiplier", str(self.prefetch_multiplier)]
        return procs.WorkerProcess(
            name,
            procs.celery_argv("bench.baselines", name, "warning", extra),
            env,
            self.run.log_dir,
        )

    def consuming(self, worker: procs.WorkerProcess) -> bool:
        from bench.baselines import READY_KEY

        return bool(self.run.redis.exists(f"{READY_KEY}{worker.pid}"))

    def publish(self, entity_ids: Sequence[str]) -> list[Sent]:
        from bench import baselines

        task = self._task()
        _declare(baselines.app, [baselines.app.amqp.queues[self.task_name]])

        def send(producer: Any, entity_id: str, _seq: int) -> tuple[str, str]:
            return task.apply_async((entity_id, 1), producer=producer).id, self.task_name

        return publish(baselines.app, send, entity_ids)

    def call(self, entity_id: str) -> Any:
        return self._task().delay(entity_id, 1).get(timeout=CALL_TIMEOUT_S)


class HandRolled(_Baseline):
    """Baseline A: a Celery task per message, row lock, JSON update, commit."""

    name, label = "handrolled", "A: hand-rolled task"
    task_name = "bench.handrolled"
    prefetch_multiplier = 1


class Noop(_Baseline):
    """Baseline B: a no-op Celery task with Redis results."""

    name, label = "noop", "B: Celery no-op"
    task_name = "bench.noop"
    prefetch_multiplier = 4
    counting = False
